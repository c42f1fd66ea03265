"""The OpenAI-compatible API end to end: real Ray Serve (HTTP and gRPC proxies on free ports), the session's
real vLLM workers, the official `openai` client (sync, async, streaming) and LangChain's `ChatOpenAI`."""
from __future__ import annotations

import asyncio
import os

import grpc
import httpx
import openai
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc
from thinkroute.v1 import worker_pb2 as wpb

from tests.conftest import free_port

pytestmark = pytest.mark.integration

ACME_KEY = "test-acme-key-not-a-secret"
TIGHT_KEY = "test-tight-key-not-a-secret"
MD = [("application", "thinkroute"), ("authorization", f"Bearer {ACME_KEY}")]  # the gRPC ingress takes the same keys
QUESTION = "What is 2 plus 3?"


@pytest.fixture(scope="module")
def stack(worker_addresses):
    """Ray Serve with both proxies; app `thinkroute` (API keys) at /, app `open` (no keys, loopback) at /open."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    os.environ["THINKROUTE_TEST_ACME_KEY"] = ACME_KEY
    os.environ["THINKROUTE_TEST_TIGHT_KEY"] = TIGHT_KEY
    ghost = f"127.0.0.1:{free_port()}"  # nothing listens here: a pool no worker can serve
    config = load_config(overrides={
        "models.ghost": {"model": "smollm2-135m", "replicas": 0, "addresses": [ghost]},
        "router.request_timeout_s": 120,
        "http.tenants": {"acme": {"api_key_env": "THINKROUTE_TEST_ACME_KEY", "dial": 0.2},
                         "tight": {"api_key_env": "THINKROUTE_TEST_TIGHT_KEY", "requests_per_second": 0.02, "burst": 1}},
    })
    grpc_port, http_port = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    serve.run(build_app(config, {**worker_addresses, "ghost": [ghost]}), name="thinkroute", route_prefix="/")
    serve.run(build_app(load_config(), worker_addresses), name="open", route_prefix="/open")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield {"base": f"http://127.0.0.1:{http_port}", "grpc": rpb_grpc.RouterStub(channel)}
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["base"] + "/v1", api_key=ACME_KEY, max_retries=0, timeout=300)


def grpc_text(stack, messages, **kw) -> rpb.RouteResponse:
    req = rpb.RouteRequest(messages=[wpb.ChatMessage(role=r, content=c) for r, c in messages], **kw)
    return stack["grpc"].Generate(req, metadata=MD, timeout=300)


def trace_usage(trace) -> dict[str, int]:
    p = sum(u["prompt_tokens"] for u in trace["usage"])
    c = sum(u["generated_tokens"] for u in trace["usage"])
    assert p == sum(c_["prompt_tokens"] for c_ in trace["calls"] if c_["kind"] != "tokenize")
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def test_sync_client_answer_equals_grpc_with_usage_plan_and_trace(stack, client):
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m", messages=[{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0, seed=7,
        extra_body={"thinkroute": {"trace": True}})
    assert raw.headers["x-thinkroute-plan"] == "direct smollm2-135m"
    resp = raw.parse()
    text = resp.choices[0].message.content
    assert text and resp.choices[0].finish_reason in ("stop", "length")
    same = grpc_text(stack, [("user", QUESTION)], model="smollm2-135m", max_tokens=16, seed=7)
    assert text == same.text  # one request path: same plan, same greedy text over both ingresses
    trace = resp.model_extra["thinkroute_trace"]
    assert trace["plan"]["strategy"] == "direct" and trace["plan"]["dial"] == pytest.approx(0.2)  # tenant acme's dial
    assert resp.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == trace_usage(trace)
    assert resp.model == "smollm2-135m"


def test_usage_sums_every_model_call_of_a_pair_strategy(client):
    raw = client.chat.completions.with_raw_response.create(
        model="strategy/cothink", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        extra_body={"thinkroute": {"trace": True, "options": {"outline_tokens": 8}}})
    resp = raw.parse()
    trace = resp.model_extra["thinkroute_trace"]
    assert len({c["model"] for c in trace["calls"]}) == 2
    assert raw.headers["x-thinkroute-plan"] == "cothink large=gemma3-270m small=smollm2-135m"
    assert resp.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == trace_usage(trace)
    # who answered, and what it cost: the embedded policy's prices per model (USD per million tokens)
    assert resp.model == "strategy/cothink"
    per = resp.usage.model_extra["models"]
    assert set(per) == {"smollm2-135m", "gemma3-270m"}
    prices = {"smollm2-135m": 0.05, "gemma3-270m": 0.10}
    expected = sum((m["prompt_tokens"] + m["completion_tokens"]) * prices[n] / 1e6 for n, m in per.items())
    assert resp.usage.model_extra["cost"] == pytest.approx(expected) and expected > 0


def test_dial_in_the_model_name_and_in_the_extension(client):
    for model, ext, dial in [("thinkroute:dial=0.7", {}, 0.7), ("thinkroute", {"dial": 0.9}, 0.9)]:
        resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                              extra_body={"thinkroute": {"trace": True, **ext}})
        assert resp.model_extra["thinkroute_trace"]["plan"]["dial"] == pytest.approx(dial)


def test_streamed_deltas_concatenate_to_the_answer_and_end_with_usage(client):
    kw = dict(model="gemma3-270m", messages=[{"role": "system", "content": "Answer briefly."},
                                             {"role": "user", "content": "Name a prime number."}], max_tokens=12)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # usage (with cost) on the last chunk even when not asked for
    plain = list(client.chat.completions.create(**kw, stream=True))
    assert plain[-1].usage.total_tokens == whole.usage.total_tokens and plain[-1].usage.model_extra["cost"] > 0
    assert plain[-1].model == "gemma3-270m"


def test_async_client_streaming_and_not_concurrently(stack):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=stack["base"] + "/v1", api_key=ACME_KEY, max_retries=0, timeout=300)
        kw = dict(model="smollm2-135m", messages=[{"role": "user", "content": "List two colours."}], max_tokens=10)

        async def streamed():
            return "".join([c.choices[0].delta.content or "" async for c in await aclient.chat.completions.create(
                **kw, stream=True) if c.choices])

        whole, parts = await asyncio.gather(aclient.chat.completions.create(**kw), streamed())
        await aclient.close()
        return whole.choices[0].message.content, parts

    whole, parts = asyncio.run(main())
    assert whole and parts == whole


def test_langchain_chat_openai_multi_turn_matches_grpc(stack):
    pytest.importorskip("langchain_openai", reason="needs langchain-openai (ops/requirements-cpu.lock)")
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="smollm2-135m", base_url=stack["base"] + "/v1", api_key=ACME_KEY, temperature=0,
                     max_tokens=12, max_retries=0, timeout=300)
    history = [SystemMessage("You are a terse assistant."), HumanMessage("Name a fruit.")]
    first = llm.invoke(history)
    assert isinstance(first, AIMessage) and first.content
    history += [first, HumanMessage("Name another one.")]
    second = llm.invoke(history)
    assert second.content and second.usage_metadata["total_tokens"] > 0
    same = grpc_text(stack, [("system", "You are a terse assistant."), ("user", "Name a fruit."),
                             ("assistant", first.content), ("user", "Name another one.")],
                     model="smollm2-135m", max_tokens=12)
    assert second.content == same.text
    assert "".join(c.content for c in llm.stream(history)) == second.content


def test_models_and_health(stack, client):
    ids = {m.id for m in client.models.list().data}
    assert {"thinkroute", "smollm2-135m", "gemma3-270m", "ghost", "strategy/direct", "strategy/specreason"} <= ids
    health = httpx.get(stack["base"] + "/health", timeout=30).json()
    assert health["pools"]["smollm2-135m"]["healthy_replicas"] == 1 and health["status"] == "degraded"  # ghost


GOOD = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize("body,status,needle", [
    (b'{"model": "thinkroute", "messages": [', 400, "not valid JSON"),
    ({**GOOD, "messages": []}, 400, "messages"),
    ({**GOOD, "max_tokens": "many"}, 400, "max_tokens"),
    ({**GOOD, "n": 2}, 400, "n = 2"),
    ({**GOOD, "tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "sub"}}}, 400, "'sub', which is not declared"),
    ({**GOOD, "model": "gpt-4o"}, 404, "unknown model 'gpt-4o'"),
    ({**GOOD, "thinkroute": {"strategy": "nope"}}, 404, "available strategies"),
    ({**GOOD, "max_tokens": 100_000}, 400, "context"),
    ({**GOOD, "model": "ghost"}, 503, "ghost"),
], ids=["malformed-json", "empty-messages", "wrong-type", "n-2", "tools", "unknown-model", "unknown-strategy",
        "context-overflow", "no-worker"])
def test_bad_input_gets_an_openai_error_then_serving_goes_on(stack, body, status, needle):
    h = {"authorization": f"Bearer {ACME_KEY}"}
    url = stack["base"] + "/v1/chat/completions"
    with httpx.Client(timeout=120, headers=h) as http:
        resp = http.post(url, content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes) \
            else http.post(url, json=body)
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and needle in err["message"], err
        assert http.post(url, json=GOOD).status_code == 200


def test_missing_or_wrong_key_is_401_and_the_openai_client_says_so(stack):
    url = stack["base"] + "/v1/chat/completions"
    assert httpx.post(url, json=GOOD, timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack["base"] + "/v1", api_key="wrong", max_retries=0).chat.completions.create(**GOOD)


def test_rate_limit_is_429_with_retry_after(stack):
    h = {"authorization": f"Bearer {TIGHT_KEY}"}
    url = stack["base"] + "/v1/chat/completions"
    first = httpx.post(url, json=GOOD, headers=h, timeout=120)
    assert first.status_code == 200
    second = httpx.post(url, json=GOOD, headers=h, timeout=120)
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert httpx.post(url, json=GOOD, headers={"authorization": f"Bearer {ACME_KEY}"}, timeout=120).status_code == 200


def test_router_without_keys_serves_loopback_clients_anonymously(stack):
    """`http.anonymous_access: loopback` (the default) with no keys: this test runs on the router's host."""
    resp = openai.OpenAI(base_url=stack["base"] + "/open/v1", api_key="unused", max_retries=0).chat.completions.create(
        **GOOD, extra_body={"thinkroute": {"trace": True}})
    assert resp.choices[0].message.content is not None
    assert resp.model_extra["thinkroute_trace"]["plan"]["dial"] == pytest.approx(0.5)  # global default
