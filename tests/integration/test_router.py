"""End to end: a real Ray Serve application with real worker processes, over Ray Serve's gRPC proxy."""
from __future__ import annotations

import os
import time

import grpc
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import free_port, start_worker

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "test-admin-token-not-a-secret"
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
           "How many clips did Natalia sell altogether in April and May?"


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """A worker of its own that a test kills."""
    w = start_worker("smollm2-135m", "hf", tmp_path_factory.mktemp("victim")).wait_ready()
    yield w
    w.kill()


@pytest.fixture(scope="module")
def router(worker_addresses, victim):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    config = load_config(overrides={"models.victim": {"model": "smollm2-135m", "replicas": 0,
                                                      "addresses": [victim.address]},
                                    "router.request_timeout_s": 120,
                                    # the drafter's first HiddenState loads its probe layers: wait for it, not the priors
                                    "policy.probe_timeout_ms": 120_000})
    grpc_port, http_port = free_port(), free_port()
    os.environ[config.serve.admin_token_env] = ADMIN_TOKEN
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    addresses = {**worker_addresses, "victim": [victim.address]}
    serve.run(build_app(config, addresses), name="thinkroute", route_prefix="/")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield rpb_grpc.RouterStub(channel)
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


MD = [("application", "thinkroute")]


def test_generate_answers_with_a_trace(router):
    resp = router.Generate(rpb.RouteRequest(query=QUESTION, max_tokens=24, dial=0.0), metadata=MD, timeout=300)
    assert resp.text.strip()
    t = resp.trace
    assert t.plan.strategy == "direct" and t.plan.models["model"] == "smollm2-135m"
    assert len(t.calls) == 1 and t.calls[0].kind == "generate"
    call = t.calls[0]
    assert call.model == "smollm2-135m" and call.generated_tokens > 0 and call.prompt_tokens > 20
    assert call.latency_ms > 0 and call.replica
    assert t.usage[0].generated_tokens == call.generated_tokens
    assert {"plan", "execute", "total"} <= set(t.stage_ms)
    assert t.stage_ms["total"] >= t.stage_ms["execute"]


def test_router_answer_equals_the_workers_own_answer(router, worker_addresses):
    """The router adds nothing to the model's text: same greedy text as calling the worker directly."""
    from thinkroute.v1 import worker_pb2 as pb
    from thinkroute.v1 import worker_pb2_grpc as pb_grpc

    resp = router.Generate(rpb.RouteRequest(query="Name a prime number.", model="gemma3-270m", max_tokens=12),
                           metadata=MD, timeout=300)
    with grpc.insecure_channel(worker_addresses["gemma3-270m"][0]) as ch:
        msgs = list(pb_grpc.WorkerStub(ch).Generate(pb.GenerateRequest(
            prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="Name a prime number.")],
                                                add_generation_prompt=True)),
            sampling=pb.SamplingParams(max_tokens=12)), timeout=300))
    assert resp.text == "".join(m.text_delta for m in msgs)
    assert resp.trace.calls[0].model == "gemma3-270m"


def test_streaming_concatenates_to_the_unary_answer(router):
    req = rpb.RouteRequest(query="List three fruits.", max_tokens=16)
    unary = router.Generate(req, metadata=MD, timeout=300)
    msgs = list(router.GenerateStream(req, metadata=MD, timeout=300))
    deltas = [m.text_delta for m in msgs if m.text_delta]
    assert len(deltas) > 1
    assert "".join(deltas) == unary.text
    assert msgs[-1].HasField("final") and msgs[-1].final.text == unary.text


@pytest.mark.parametrize("req,code,needle", [
    (rpb.RouteRequest(query=""), grpc.StatusCode.INVALID_ARGUMENT, "no question"),
    (rpb.RouteRequest(query="hi", model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
    (rpb.RouteRequest(query="hi", strategy="no-such-strategy"), grpc.StatusCode.NOT_FOUND, "available strategies"),
    (rpb.RouteRequest(query="hi", max_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    (rpb.RouteRequest(query="hi", dial=1.5), grpc.StatusCode.INVALID_ARGUMENT, "dial"),
    (rpb.RouteRequest(query="hi", max_tokens=100_000), grpc.StatusCode.INVALID_ARGUMENT, "context"),
], ids=["empty", "unknown-model", "unknown-strategy", "negative-max-tokens", "dial-range", "over-context"])
def test_bad_requests_get_clear_errors(router, req, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        router.Generate(req, metadata=MD, timeout=120)
    assert err.value.code() == code
    assert needle in err.value.details()


def test_killed_worker_fails_with_unavailable_within_the_deadline(router, victim):
    ok = router.Generate(rpb.RouteRequest(query="Say hi.", model="victim", max_tokens=2), metadata=MD, timeout=300)
    assert ok.trace.calls[0].replica == victim.address
    victim.kill()
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        router.Generate(rpb.RouteRequest(query="Say hi.", model="victim", max_tokens=2), metadata=MD, timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "victim" in err.value.details()
    assert time.monotonic() - start < 60
    # the other models are unaffected
    assert router.Generate(rpb.RouteRequest(query="Say hi.", max_tokens=2), metadata=MD, timeout=300).text is not None


def test_admin_dial_needs_the_token_and_applies_to_the_next_request(router):
    with pytest.raises(grpc.RpcError) as err:
        router.SetDial(rpb.SetDialRequest(dial=0.9), metadata=MD, timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        router.SetDial(rpb.SetDialRequest(dial=0.9), metadata=MD + [("x-thinkroute-admin-token", "wrong")], timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = MD + [("x-thinkroute-admin-token", ADMIN_TOKEN)]
    before = router.GetDial(rpb.GetDialRequest(), metadata=MD, timeout=30).dial
    new = 0.2 if before != 0.2 else 0.3
    assert router.SetDial(rpb.SetDialRequest(dial=new), metadata=admin, timeout=30).dial == pytest.approx(new)
    resp = router.Generate(rpb.RouteRequest(query="Say hi.", max_tokens=2), metadata=MD, timeout=300)
    assert resp.trace.plan.dial == pytest.approx(new)
    with pytest.raises(grpc.RpcError) as err:
        router.SetDial(rpb.SetDialRequest(dial=2.0), metadata=admin, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pool_stats_report_every_pool(router):
    stats = router.PoolStats(rpb.PoolStatsRequest(), metadata=MD, timeout=30)
    pools = {p.model: p for p in stats.pools}
    assert {"smollm2-135m", "gemma3-270m"} <= set(pools)
    assert pools["smollm2-135m"].healthy_replicas == 1 and pools["smollm2-135m"].desired_replicas >= 1


def test_policy_plans_by_the_dial(router):
    """No strategy/model in the request: the policy decides. Dial 0 = the drafter alone; dial 1 = the
    candidate with the best predicted quality. The embedded default predicts with its shipped probe artifact
    (router/artifacts/embedded: the drafter's hidden state, so per query), the trace says `probe`."""
    from router.config import load_config

    cfg = load_config().policy
    cheap = router.Generate(rpb.RouteRequest(query="What is 2 + 3?", max_tokens=4, dial=0.0), metadata=MD, timeout=300)
    assert cheap.trace.plan.strategy == "direct" and dict(cheap.trace.plan.models) == {"model": "smollm2-135m"}
    assert cheap.trace.plan.reason.startswith("policy: ")
    ranked = cheap.trace.plan.candidates["ranked"]
    assert len(ranked) == len(cfg.candidates) and ranked[0]["plan"] == "drafter"
    assert cheap.trace.plan.candidates["predictions"]["kind"] == ("probe" if cfg.artifact else "priors")
    top = router.Generate(rpb.RouteRequest(query="What is 2 + 3?", max_tokens=4, dial=1.0), metadata=MD, timeout=300)
    top_ranked = top.trace.plan.candidates["ranked"]
    assert top_ranked[0]["p_correct"] == max(r["p_correct"] for r in top_ranked)  # dial 1: the best predicted
    assert top.trace.plan.reason.startswith(f"policy: {top_ranked[0]['plan']} has the highest utility")
