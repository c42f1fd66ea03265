"""The worker contract over real gRPC, against the `hf` reference backend and transformers itself.

The references are computed in this process with transformers on the same safetensors
directory the worker loads, so every comparison is model-vs-model, never a constant.
"""
from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import pytest
import torch

from thinkroute.v1 import worker_pb2 as pb
from thinkroute.v1 import worker_pb2_grpc as pb_grpc

from tests.conftest import start_worker

pytestmark = pytest.mark.integration

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Question: Tom has 3 apples and buys 2 more. How many apples does he have?\nAnswer:",
]


@pytest.fixture(scope="module")
def stub(smollm2_hf):
    channel = grpc.insecure_channel(smollm2_hf.address)
    yield pb_grpc.WorkerStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return tok, model


def generate(stub, prompt: pb.Prompt, max_tokens: int, stop=(), **kw):
    req = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens, stop=list(stop), **kw))
    msgs = list(stub.Generate(req, timeout=120))
    return "".join(m.text_delta for m in msgs), [t for m in msgs for t in m.token_ids], msgs[-1].final, msgs


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_generate_equals_transformers_generate(stub, reference, text):
    tok, model = reference
    ids = tok.encode(text, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    expected = out[0, len(ids):].tolist()
    expected = [t for t in expected if t != tok.eos_token_id]
    _, got, final, _ = generate(stub, pb.Prompt(token_ids=pb.TokenIds(ids=ids)), 24)
    assert got == expected[: len(got)] and len(got) == len(expected)
    assert final.usage.prompt_tokens == len(ids)


def test_score_equals_forward_pass(stub, reference):
    tok, model = reference
    prompt, cont = "The capital of France is", " Paris, a city on the Seine"
    p_ids = tok.encode(prompt, add_special_tokens=False)
    c_ids = tok.encode(cont, add_special_tokens=False)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
    resp = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=prompt), continuation_ids=pb.TokenIds(ids=c_ids),
                                      top_k=5, candidate_ids=[c_ids[0], 42]), timeout=60)
    expected = [float(logprobs[len(p_ids) - 1 + i, t]) for i, t in enumerate(c_ids)]
    assert [c.token_id for c in resp.continuation] == c_ids
    np.testing.assert_allclose([c.logprob for c in resp.continuation], expected, atol=1e-4)
    top_vals, top_ids = torch.topk(logprobs[-1], 5)
    assert [t.token_id for t in resp.top_next] == top_ids.tolist()
    np.testing.assert_allclose([t.logprob for t in resp.top_next], top_vals.tolist(), atol=1e-4)
    np.testing.assert_allclose([c.logprob for c in resp.candidates],
                               [float(logprobs[-1, c_ids[0]]), float(logprobs[-1, 42])], atol=1e-4)


def test_hidden_state_equals_output_hidden_states(stub, reference):
    tok, model = reference
    texts = ["Natalia sold clips to 48 of her friends.", "hello"]
    resp = stub.HiddenState(pb.HiddenStateRequest(prompts=[pb.Prompt(text=t) for t in texts], layers=[-1, 0, 12]),
                            timeout=60)
    n_layers = model.config.num_hidden_layers
    for text, r in zip(texts, resp.results):
        ids = tok.encode(text, add_special_tokens=False)
        with torch.inference_mode():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        got = np.frombuffer(r.data, dtype="<f4").reshape(tuple(r.shape))
        assert list(r.layers) == [n_layers, 0, 12] and got.shape == (3, model.config.hidden_size)
        for row, layer in zip(got, r.layers):
            np.testing.assert_allclose(row, hs[layer][0, -1].float().numpy(), atol=1e-4)
    mean = stub.HiddenState(pb.HiddenStateRequest(prompts=[pb.Prompt(text=texts[0])], pooling=pb.POOLING_MEAN),
                            timeout=60).results[0]
    ids = tok.encode(texts[0], add_special_tokens=False)
    with torch.inference_mode():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(np.frombuffer(mean.data, dtype="<f4"), hs[-1][0].mean(0).numpy(), atol=1e-4)


def test_stop_strings_cut_and_stream_concatenates(stub):
    prompt = pb.Prompt(text="Count: 1, 2, 3, 4, 5, 6, 7,")
    full, _, final_full, _ = generate(stub, prompt, 20)
    assert final_full.finish_reason == pb.FINISH_REASON_LENGTH
    stop = full.strip()[:3]  # a stop string the unconstrained text certainly contains
    cut_at = full.find(stop)
    text, _, final, msgs = generate(stub, prompt, 20, stop=[stop])
    assert text == full[:cut_at]
    assert stop not in text
    assert final.finish_reason == pb.FINISH_REASON_STOP and final.stop_string == stop
    assert len(msgs) >= 2  # it streamed
    assert "".join(m.text_delta for m in msgs) == text


def test_streamed_deltas_equal_non_streamed_text_for_chat(stub):
    prompt = pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="Name three colors.")],
                                          add_generation_prompt=True))
    a, ids_a, _, msgs = generate(stub, prompt, 24)
    b, ids_b, _, _ = generate(stub, prompt, 24)
    assert a == b and ids_a == ids_b
    assert len([m for m in msgs if m.text_delta]) > 1


BAD = [
    ("empty text prompt", pb.Prompt(text=""), 8, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("no prompt at all", pb.Prompt(), 8, grpc.StatusCode.INVALID_ARGUMENT, "exactly one"),
    ("max_tokens 0", pb.Prompt(text="hi"), 0, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens negative", pb.Prompt(text="hi"), -3, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens above context", pb.Prompt(text="hi"), 100_000, grpc.StatusCode.INVALID_ARGUMENT, "context"),
    ("token id out of vocab", pb.Prompt(token_ids=pb.TokenIds(ids=[1, 10**7])), 4, grpc.StatusCode.INVALID_ARGUMENT,
     "vocabulary"),
    ("negative token id", pb.Prompt(token_ids=pb.TokenIds(ids=[-1])), 4, grpc.StatusCode.INVALID_ARGUMENT, "vocabulary"),
    ("oversized prompt", pb.Prompt(text="word " * 5000), 4, grpc.StatusCode.INVALID_ARGUMENT, "context"),
    ("bad chat role", pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="robot", content="x")])), 4,
     grpc.StatusCode.INVALID_ARGUMENT, "role"),
]


@pytest.mark.parametrize("name,prompt,max_tokens,code,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_and_worker_keeps_serving(stub, name, prompt, max_tokens, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, prompt, max_tokens)
    assert err.value.code() == code
    assert needle in err.value.details()
    text, _, final, _ = generate(stub, pb.Prompt(text="1, 2, 3,"), 2)  # still serving
    assert final.usage.generated_tokens == 2


def test_info_and_health(stub, smollm2_hf):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    info = stub.Info(pb.InfoRequest())
    assert info.model_id == "smollm2-135m" and info.backend == "hf" and info.hidden_size == 576
    assert info.has_chat_template and info.context_length == 2048
    with grpc.insecure_channel(smollm2_hf.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="thinkroute.v1.Worker"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_queue_bound_gives_resource_exhausted(stub):
    # hf runs 1 request at a time; this worker queues at most 2 more (--max-queue 2).
    def call(_):
        try:
            generate(stub, pb.Prompt(text="Once upon a time"), 24)
            return "ok"
        except grpc.RpcError as e:
            return e.code()

    with cf.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(call, range(6)))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in results
    assert results.count("ok") >= 3  # the admitted ones all finished
    assert generate(stub, pb.Prompt(text="1, 2,"), 2)[2].usage.generated_tokens == 2


def test_shutdown_drains_in_flight_requests(worker_log_dir):
    # A grace period far longer than the request needs, so the check is about draining, not speed.
    w = start_worker("smollm2-135m", "hf", worker_log_dir, "--grace", "600").wait_ready()
    with grpc.insecure_channel(w.address) as ch:
        stub = pb_grpc.WorkerStub(ch)
        req = pb.GenerateRequest(prompt=pb.Prompt(text="Once upon a time"), sampling=pb.SamplingParams(max_tokens=24))
        stream = stub.Generate(req, timeout=120)
        first = next(stream)  # the request is in flight
        w.proc.send_signal(15)  # SIGTERM: drain
        rest = list(stream)
        msgs = [first, *rest]
        assert msgs[-1].final.usage.generated_tokens == 24  # finished, not cut off
        with pytest.raises(grpc.RpcError) as err:  # no new requests while draining / after
            list(stub.Generate(req, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert w.proc.wait(60) == 0


def test_killed_worker_fails_fast_with_unavailable(worker_log_dir):
    w = start_worker("smollm2-135m", "hf", worker_log_dir).wait_ready()
    w.kill()
    with grpc.insecure_channel(w.address) as ch:
        stub = pb_grpc.WorkerStub(ch)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(pb.GenerateRequest(prompt=pb.Prompt(text="x"), sampling=pb.SamplingParams(max_tokens=2)),
                               timeout=20))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < 20


def test_unknown_model_fails_at_start_with_the_choices(worker_log_dir):
    w = start_worker("no-such-model", "hf", worker_log_dir)
    assert w.proc.wait(120) != 0
    log = w.log_path.read_text()
    assert "unknown model 'no-such-model'" in log and "smollm2-135m" in log
