"""Reasoning modes on the real stack: a SmolLM2-135M vLLM worker configured with stand-in thinking
delimiters (tests/configs/thinking_standin.yaml), over gRPC directly and through Ray Serve's HTTP proxy.

- budget=<N>: at most N tokens inside the span, then the end marker, then an answer; the worker's final
  counts both parts, and so do the router trace and OpenAI `usage.completion_tokens_details`.
- off on a model whose thinking config has no way to switch it off: INVALID_ARGUMENT / HTTP 400 naming
  the model and the modes it serves.
"""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest

from thinkroute.v1 import worker_pb2 as pb
from thinkroute.v1 import worker_pb2_grpc as pb_grpc

from tests.conftest import free_port, start_worker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "configs" / "thinking_standin.yaml"
START, END = "<reasoning>", "</reasoning>"
QUESTION = "Explain in detail why the sky is blue."  # long answers: the span reaches its budget


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """One SmolLM2 vLLM worker with the config's thinking delimiters; Ray Serve app / on a free HTTP port."""
    from router.config import load_config

    config = load_config(CONFIG)
    pool = config.models["smollm2-135m"]
    engine = json.dumps(pool.engine_dict())
    worker = start_worker("smollm2-135m", "vllm", tmp_path_factory.mktemp("thinking"), "--config-json", engine)
    state: dict = {"config": config}
    try:
        worker.wait_ready()
        state["address"] = worker.address
        yield state
    finally:
        try:
            import ray

            if ray.is_initialized():
                from ray import serve

                serve.shutdown()
                ray.shutdown()
        finally:
            worker.stop(timeout=30)


@pytest.fixture(scope="module")
def stub(standin):
    channel = grpc.insecure_channel(standin["address"])
    yield pb_grpc.WorkerStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def http_base(standin):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from router.serve_app import build_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port))
    serve.run(build_app(standin["config"], {"smollm2-135m": [standin["address"]]}), name="thinking", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def chat(question: str) -> pb.Prompt:
    return pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=question)],
                                        add_generation_prompt=True))


def split_stream(msgs) -> tuple[list[int], list[int], str]:
    """(thinking token ids, answer token ids, text) from a Generate stream: the worker's closing marker is a
    text-only message (no token ids); tokens before it are thinking, tokens after it the answer."""
    think, answer, text, closed = [], [], "", False
    for m in msgs:
        text += m.text_delta
        if not closed and m.text_delta.startswith(END) and not m.token_ids:
            closed = True
            continue
        (answer if closed else think).extend(m.token_ids)
    return think, answer, text


@pytest.mark.parametrize("budget", [4, 12])
def test_budget_caps_thinking_and_the_answer_follows(stub, budget):
    req = pb.GenerateRequest(prompt=chat(QUESTION), thinking=f"budget={budget}",
                             sampling=pb.SamplingParams(max_tokens=40))
    msgs = list(stub.Generate(req, timeout=120))
    think, answer, text = split_stream(msgs)
    usage = msgs[-1].final.usage
    assert text.startswith(START) and END + "\n" in text, text
    assert len(think) <= budget and usage.thinking_tokens == len(think), (usage, text)
    assert usage.thinking_tokens > 0 and len(answer) > 0, text
    assert usage.generated_tokens == len(think) + len(answer) <= 40, usage
    assert text.split(END + "\n", 1)[1].strip(), "no answer text after the span"
    print(f"budget={budget}: thinking {usage.thinking_tokens}, answer {len(answer)} tokens: {text!r}")


def test_effort_maps_to_the_configured_budget(stub):
    req = pb.GenerateRequest(prompt=chat(QUESTION), thinking="effort=low", sampling=pb.SamplingParams(max_tokens=40))
    msgs = list(stub.Generate(req, timeout=120))
    think, answer, _ = split_stream(msgs)
    assert 0 < msgs[-1].final.usage.thinking_tokens == len(think) <= 8 and answer  # effort.low = 8 in the config


def test_no_thinking_field_leaves_generation_untouched(stub):
    req = pb.GenerateRequest(prompt=chat(QUESTION), sampling=pb.SamplingParams(max_tokens=16))
    msgs = list(stub.Generate(req, timeout=120))
    assert msgs[-1].final.usage.thinking_tokens == 0
    assert START not in "".join(m.text_delta for m in msgs)


def test_off_is_refused_naming_the_model_and_its_modes(stub):
    req = pb.GenerateRequest(prompt=chat(QUESTION), thinking="off", sampling=pb.SamplingParams(max_tokens=8))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(req, timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'smollm2-135m' cannot serve thinking='off'" in e.value.details()
    assert "on, budget=<N>, effort=<low|medium|high>" in e.value.details()


def test_http_usage_and_trace_count_thinking_and_answer(http_base):
    body = {"model": "smollm2-135m", "max_tokens": 40, "messages": [{"role": "user", "content": QUESTION}],
            "thinkroute": {"options": {"thinking": "budget=6"}, "trace": True}}
    r = httpx.post(f"{http_base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    usage = out["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning <= 6 and usage["completion_tokens"] > reasoning, usage
    calls = [c for c in out["thinkroute_trace"]["calls"] if c["kind"] == "generate"]
    assert sum(c["thinking_tokens"] for c in calls) == reasoning
    per_model = out["thinkroute_trace"]["usage"]
    assert sum(u["thinking_tokens"] for u in per_model) == reasoning
    content = out["choices"][0]["message"]["content"]
    assert content.startswith(START) and END in content
    print(f"HTTP usage: {usage['completion_tokens']} completion tokens, {reasoning} reasoning")


def test_http_off_is_a_400_naming_the_modes(http_base):
    body = {"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}],
            "thinkroute": {"options": {"thinking": "off"}}}
    r = httpx.post(f"{http_base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 400, r.text
    assert "cannot serve thinking='off'" in r.text and "budget=<N>" in r.text, r.text


def test_http_bad_knob_value_is_a_400_naming_the_knob(http_base):
    body = {"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}],
            "thinkroute": {"options": {"thinking": "budget=0"}}}
    r = httpx.post(f"{http_base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "thinking" in r.text, r.text
