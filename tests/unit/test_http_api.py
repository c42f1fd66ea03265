"""The OpenAI-compatible HTTP API against a hand-written fake RouterCore (no Ray, no workers)."""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from router.config import load_config
from router.errors import InvalidRoute, ModelCallError, NoReplica, NotFound
from router.http_api import (ApiError, OpenAIFrontend, Target, build_http_app, model_names, parse_model_name,
                             plan_summary, usage_from_trace)
from router.tenants import Authenticator, AuthError, TokenBucket, digest, key_digests
from router.types import RouteResult

LOCAL = ("127.0.0.1", 50000)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakePool:
    async def stats(self):
        return [{"model": "smollm2-135m", "replicas": 1, "healthy_replicas": 1},
                {"model": "gemma3-270m", "replicas": 1, "healthy_replicas": 0}]


class FakeCore:
    """Answers "Hello world" in three deltas, with a two-model trace; or raises `fail` (before/after deltas)."""

    def __init__(self) -> None:
        self.queries = []
        self.pool = FakePool()
        self.fail: Exception | None = None
        self.fail_after_deltas = False
        self.deltas = ["Hel", "lo", " world"]

    async def route(self, query, emit=None):
        self.queries.append(query)
        if self.fail is not None and not self.fail_after_deltas:
            raise self.fail
        deltas = self.deltas
        if emit is not None:
            for d in deltas:
                await emit(d)
        if self.fail is not None:
            raise self.fail
        trace = {"plan": {"strategy": query.strategy or "direct", "models": {"model": query.model or "smollm2-135m"},
                          "dial": query.dial if query.dial is not None else 0.5},
                 "calls": [], "stage_ms": {"total": 1.0}, "details": {},
                 "usage": [{"model": "smollm2-135m", "prompt_tokens": 10, "cached_prompt_tokens": 4,
                            "generated_tokens": 3, "calls": 2},
                           {"model": "gemma3-270m", "prompt_tokens": 7, "cached_prompt_tokens": 0,
                            "generated_tokens": 2, "calls": 1}]}
        return RouteResult(request_id=query.request_id, text="".join(deltas), final_answer="", finish_reason="length",
                           trace=trace)


def make_client(overrides=None, digests=None, client=LOCAL, clock=None):
    config = load_config(overrides=overrides or {})
    core = FakeCore()
    frontend = OpenAIFrontend(core, config, digests or {}, clock=clock or FakeClock())
    return TestClient(build_http_app(frontend), client=client), core


def chat(client, body=None, headers=None, **extra):
    body = body if body is not None else {"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], **extra}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}


def assert_openai_error(resp, status, needle):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert needle in err["message"], err


# -- model names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,target", [
    ("thinkroute", Target()),
    ("thinkroute:dial=0.2", Target(dial=0.2)),
    ("thinkroute:dial=1", Target(dial=1.0)),
    ("smollm2-135m", Target(model="smollm2-135m")),
    ("gemma3-270m", Target(model="gemma3-270m")),
    ("strategy/direct", Target(strategy="direct")),
])
def test_model_names_select_the_routing(name, target):
    assert parse_model_name(name, load_config()) == target


@pytest.mark.parametrize("name,status", [("gpt-4o", 404), ("strategy/nope", 404), ("thinkroute:dial=1.5", 400),
                                         ("thinkroute:dial=x", 400), ("thinkroute:temp=1", 400)])
def test_bad_model_names_say_what_works(name, status):
    with pytest.raises(ApiError) as err:
        parse_model_name(name, load_config())
    assert err.value.status == status
    assert "thinkroute" in err.value.message


def test_every_listed_model_parses():
    config = load_config()
    client, _ = make_client()
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == model_names(config)
    assert {"thinkroute", "smollm2-135m", "gemma3-270m", "strategy/direct"} <= set(ids)
    for name in ids:
        parse_model_name(name, config)


# -- requests -> RouteQuery ----------------------------------------------------------------------
def test_request_fields_reach_the_route_query():
    client, core = make_client()
    resp = chat(client, {
        "model": "thinkroute:dial=0.2",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
                     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"}],
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "max_completion_tokens": 9, "stop": "\n", "seed": 3,
        "user": "ignored", "thinkroute": {"strategy": "direct", "max_latency_ms": 5000, "options": {"thinking_budget": 4}},
    })
    assert resp.status_code == 200, resp.text
    q = core.queries[-1]
    assert [(m.role, m.content) for m in q.messages] == [("system", "Be brief."), ("user", "What is 2+2?"),
                                                         ("assistant", "4."), ("user", "And 3+3?")]
    assert (q.temperature, q.top_p, q.max_tokens, q.stop, q.seed) == (0.7, 0.9, 9, ["\n"], 3)
    assert (q.dial, q.strategy, q.model, q.max_latency_ms, q.options) == (0.2, "direct", None, 5000, {"thinking_budget": 4})
    assert q.tenant == "default"


def test_omitted_sampling_is_greedy_and_the_router_default_length():
    client, core = make_client()
    chat(client, model="smollm2-135m")
    q = core.queries[-1]
    assert (q.temperature, q.top_p, q.max_tokens, q.model, q.strategy, q.dial) == (0.0, 1.0, 0, "smollm2-135m", None, None)


# -- responses ---------------------------------------------------------------------------------
def test_non_streaming_response_has_openai_shape_usage_and_plan_header():
    client, _ = make_client()
    resp = chat(client, model="strategy/direct", thinkroute={"trace": True})
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "smollm2-135m"  # the model that answered
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                                "finish_reason": "length", "logprobs": None}]
    usage = body["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details")} == \
        {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22, "prompt_tokens_details": {"cached_tokens": 4}}
    # cost: the embedded policy's prices (USD per million tokens): smollm2 0.05, gemma3 0.10
    assert usage["cost"] == pytest.approx((13 * 0.05 + 9 * 0.10) / 1e6)
    assert {k: usage["models"]["gemma3-270m"][k] for k in ("prompt_tokens", "completion_tokens", "cached_tokens",
                                                           "calls", "cost")} == \
        {"prompt_tokens": 7, "completion_tokens": 2, "cached_tokens": 0, "calls": 1, "cost": pytest.approx(9 * 0.10 / 1e6)}
    assert resp.headers["x-thinkroute-plan"] == "direct smollm2-135m"
    assert body["thinkroute_trace"]["plan"]["strategy"] == "direct"
    assert "thinkroute_trace" not in chat(client).json()


def test_plan_summary_names_every_role():
    assert plan_summary({"plan": {"strategy": "specreason", "models": {"small": "a", "large": "b"}}}) == \
        "specreason large=b small=a"
    assert usage_from_trace({"usage": []})["total_tokens"] == 0


def _events(resp):
    lines = [line for line in resp.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_streaming_sends_deltas_then_finish_then_usage():
    client, _ = make_client()
    resp = chat(client, stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = _events(resp)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello world"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["thinkroute_plan"] == "direct smollm2-135m" and events[-2]["model"] == "smollm2-135m"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 22
    assert events[-1]["usage"]["cost"] > 0 and all(e["usage"] is None for e in events[:-1])
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    # without include_usage, usage (with cost) still rides on the last chunk, and only there
    plain = _events(chat(client, stream=True))
    assert plain[-1]["usage"]["total_tokens"] == 22 and all("usage" not in e for e in plain[:-1])


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "thinkroute", "messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "thinkroute", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n = 2"),
    ({"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], "thinkroute": {"dial": 3}}, 400, "dial"),
    ({"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}], "thinkroute": {"bogus": 1}}, 400, "bogus"),
    ({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "tools": [F],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "'g', which is not declared"),
    ({"model": "strategy/specreason", "messages": [{"role": "user", "content": "hi"}], "tools": [F]}, 400,
     "strategy 'specreason' cannot"),
    ({"model": "thinkroute", "messages": [{"role": "tool", "content": "42"}]}, 400, "tool_call_id None"),
    ({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, 400,
     "not a valid JSON schema"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "available models"),
], ids=["malformed-json", "not-an-object", "empty-messages", "no-model", "wrong-type", "zero-max-tokens",
        "bad-role", "n-2", "dial-range", "unknown-extension-field", "unknown-tool-choice", "tools-via-pair-strategy",
        "tool-result-without-call", "schema-not-a-schema", "unknown-model"])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(body, status, needle):
    client, _ = make_client()
    if isinstance(body, bytes):
        resp = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        resp = chat(client, body)
    assert_openai_error(resp, status, needle)
    assert chat(client).status_code == 200


@pytest.mark.parametrize("error,status,code", [
    (InvalidRoute("the request has no question"), 400, "invalid_argument"),
    (NotFound("unknown model 'x'"), 404, "model_not_found"),
    (NoReplica("no healthy replica of 'smollm2-135m'"), 503, "unavailable"),
    (ModelCallError("prompt + max_tokens exceed the context length 2048", model="smollm2-135m", role="model",
                    step=None, code="INVALID_ARGUMENT"), 400, "invalid_argument"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_routing_errors_keep_their_status_streaming_or_not(error, status, code, stream):
    client, core = make_client()
    core.fail = error
    resp = chat(client, stream=stream)
    assert_openai_error(resp, status, str(error)[:20])
    assert resp.json()["error"]["code"] == code
    core.fail = None
    assert chat(client, stream=stream).status_code == 200


def test_an_error_after_the_first_delta_ends_the_stream_with_an_error_event():
    client, core = make_client()
    core.fail, core.fail_after_deltas = NoReplica("worker went away"), True
    resp = chat(client, stream=True)
    assert resp.status_code == 200
    events = _events(resp)
    assert events[-1]["error"]["message"] == "worker went away"


def test_unknown_paths_answer_in_openai_shape():
    client, _ = make_client()
    assert_openai_error(client.get("/v1/nope"), 404, "/v1/chat/completions")


def test_health_reports_pools():
    client, _ = make_client()
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "degraded"
    assert resp.json()["pools"]["smollm2-135m"]["healthy_replicas"] == 1


# -- tenants, auth, rate limits -------------------------------------------------------------------
TENANTS = {"http.tenants": {"acme": {"api_key_env": "ACME_KEY", "dial": 0.2, "requests_per_second": 0.5, "burst": 2},
                            "beta": {"api_key_sha256": digest("beta-key")}}}


def test_keys_map_to_tenants_and_tenant_dials_join_the_dial_config():
    config = load_config(overrides=TENANTS)
    assert config.dial.tenants == {"acme": 0.2}
    digests = key_digests(config.auth, {"ACME_KEY": "acme-key"})
    assert digests == {digest("acme-key"): "acme", digest("beta-key"): "beta"}
    with pytest.raises(ValueError, match="ACME_KEY"):
        key_digests(config.auth, {})


@pytest.mark.parametrize("override,needle", [
    ({"http.tenants": {"t": {"dial": 0.3}}}, "api_key_env or api_key_sha256"),
    ({"http.tenants": {"t": {"api_key_sha256": "abc"}}}, "64 hex digits"),
    ({**TENANTS, "dial.tenants": {"acme": 0.9}}, "disagrees"),
    ({"http.anonymous_access": "maybe"}, "anonymous_access"),
])
def test_invalid_tenant_config_names_the_field(override, needle):
    with pytest.raises(SystemExit, match=needle):
        load_config(overrides=override)


def test_api_keys_authenticate_tenants():
    client, core = make_client(TENANTS, key_digests(load_config(overrides=TENANTS).auth, {"ACME_KEY": "acme-key"}))
    assert_openai_error(chat(client), 401, "missing API key")
    assert_openai_error(chat(client, headers={"authorization": "Bearer nope"}), 401, "invalid API key")
    assert_openai_error(chat(client, headers={"authorization": "Basic abc"}), 401, "Bearer")
    assert_openai_error(client.get("/v1/models"), 401, "API key")
    assert chat(client, headers={"authorization": "Bearer beta-key"}).status_code == 200
    assert core.queries[-1].tenant == "beta"
    assert chat(client, headers={"authorization": "Bearer acme-key"}).status_code == 200
    assert core.queries[-1].tenant == "acme" and core.queries[-1].dial is None  # the tenant's dial applies in the core


@pytest.mark.parametrize("mode,client,key,ok", [
    ("loopback", LOCAL, None, True),
    ("loopback", LOCAL, "sk-anything", True),       # clients that insist on a key send a dummy one
    ("loopback", ("10.1.2.3", 5000), None, False),
    ("on", ("10.1.2.3", 5000), None, True),
    ("off", LOCAL, None, False),
])
def test_anonymous_access_without_configured_keys(mode, client, key, ok):
    c, core = make_client({"http.anonymous_access": mode}, client=client)
    resp = chat(c, headers={"authorization": f"Bearer {key}"} if key else {})
    assert resp.status_code == (200 if ok else 401), resp.text
    if ok:
        assert core.queries[-1].tenant == "default"


def test_rate_limit_answers_429_with_retry_after_then_recovers():
    clock = FakeClock()
    client, _ = make_client(TENANTS, {digest("acme-key"): "acme"}, clock=clock)
    h = {"authorization": "Bearer acme-key"}
    assert [chat(client, headers=h).status_code for _ in range(2)] == [200, 200]
    resp = chat(client, headers=h)
    assert_openai_error(resp, 429, "rate limit")
    assert resp.headers["retry-after"] == "2" and resp.json()["error"]["code"] == "rate_limit_exceeded"
    clock.t += 2.0
    assert chat(client, headers=h).status_code == 200


def test_token_bucket():
    clock = FakeClock()
    b = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)
    clock.t += 0.5
    assert b.take() == 0.0
    assert TokenBucket(rate=0.0, burst=1, clock=clock).take() == 0.0


def test_authenticator_refuses_a_wrong_key_even_when_anonymous_access_is_on():
    auth = Authenticator(load_config(overrides={"http.anonymous_access": "on"}).auth, {digest("k"): "t"})
    assert auth.authenticate(None, "10.0.0.1") == "default"
    assert auth.authenticate("Bearer k", "10.0.0.1") == "t"
    with pytest.raises(AuthError):
        auth.authenticate("Bearer wrong", "127.0.0.1")


# -- tool calls and structured outputs through the adapter --------------------------------------------------
def test_required_tools_send_the_call_schema_and_return_tool_calls():
    client, core = make_client()
    core.deltas = ['{"name": "f", ', '"arguments": {"x": 3}}']
    body = chat(client, model="smollm2-135m", tools=[F], tool_choice="required").json()
    q = core.queries[-1]
    assert q.tools == ("f",) and json.loads(q.constraint.json_schema)["properties"]["name"] == {"const": "f"}
    assert "<tools>" in q.messages[0].content and q.messages[0].role == "system"
    msg = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and msg["content"] is None
    assert msg["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 3}'}
    events = _events(chat(client, model="smollm2-135m", tools=[F], tool_choice="required", stream=True))
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in events if e["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "f"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_response_format_becomes_the_answer_constraint():
    client, core = make_client()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat(client, model="smollm2-135m", response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert json.loads(core.queries[-1].constraint.json_schema) == schema and core.queries[-1].tools == ()
    chat(client, model="smollm2-135m", response_format={"type": "json_object"})
    assert json.loads(core.queries[-1].constraint.json_schema) == {"type": "object"}
    chat(client, model="smollm2-135m")
    assert core.queries[-1].constraint is None


def test_tool_history_reaches_the_model_in_the_generic_format():
    client, core = make_client()
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert chat(client, {"model": "smollm2-135m", "messages": messages, "tools": [F]}).status_code == 200
    roles = [m.role for m in core.queries[-1].messages]
    assert roles == ["system", "user", "assistant", "tool"]
    assert core.queries[-1].messages[2].content.startswith("<tool_call>")


def test_a_client_leaving_before_the_first_delta_cancels_the_routed_request():
    """The adapter's producer task must not outlive the request: cancelling the handler while it waits for
    the first delta (what the proxy does when the client hangs up) cancels the route call."""
    import asyncio

    from router.admission import Ticket
    from router.http_api import ChatCompletionRequest, chat_query

    class SlowCore(FakeCore):
        def __init__(self):
            super().__init__()
            self.started, self.cancelled = asyncio.Event(), False

        async def route(self, query, emit=None):
            self.started.set()
            try:
                await asyncio.sleep(3600)  # a plan whose first delta is far away
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    async def main():
        config = load_config()
        core = SlowCore()
        frontend = OpenAIFrontend(core, config, {})
        req = ChatCompletionRequest.model_validate(
            {"model": "smollm2-135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        query, turn = chat_query(req, Target(model="smollm2-135m"), "default", None, config)
        handler = asyncio.ensure_future(frontend._stream(req, query, Ticket(frontend.admission, "default", 0), turn))
        await asyncio.wait_for(core.started.wait(), 5)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        for _ in range(100):
            if core.cancelled:
                break
            await asyncio.sleep(0.01)
        return core.cancelled

    assert asyncio.run(main())


def test_parallel_tool_calls_to_a_one_call_family_is_a_400_naming_the_field():
    client, core = make_client({"models.llama": {"model": "llama3.2-1b-instruct", "replicas": 0,
                                                 "addresses": ["127.0.0.1:9"]}})
    body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "tools": [F], "parallel_tool_calls": True}
    resp = chat(client, body)
    assert_openai_error(resp, 400, "one call per turn")
    assert resp.json()["error"]["param"] == "parallel_tool_calls" and not core.queries
    assert chat(client, {**body, "parallel_tool_calls": False}).status_code == 200
    # the embedded families accept it (a turn may then hold several calls)
    assert chat(client, {**body, "model": "smollm2-135m"}).status_code == 200
