"""Fuzzing against a running stack: a real worker process (SmolLM2, hf backend) and a real Ray Serve
router over it (gRPC and HTTP proxies). Every fuzzed input gets a valid answer or a client error
(INVALID_ARGUMENT / NOT_FOUND over gRPC, 4xx over HTTP), never an internal error or a hang, and the
server answers a good request right after. Example counts are small (max_tokens <= 4) so the file runs
in about two minutes; the pure boundary fuzzing with many more examples is tests/unit/test_fuzz_boundaries.py.
The caps table (workers/limits.py) is checked here over real gRPC as well.
"""
from __future__ import annotations

import json
import math

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import router_pb2_grpc as rpb_grpc  # noqa: E402
from thinkroute.v1 import worker_pb2 as pb  # noqa: E402
from thinkroute.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402

from tests.conftest import free_port, start_worker  # noqa: E402
from workers import limits as L  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # run by `ops/test.sh tests`
LIVE = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
MD = [("application", "thinkroute")]
TEXT = st.text(max_size=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = start_worker("smollm2-135m", "hf", tmp_path_factory.mktemp("fuzz")).wait_ready()
    yield w
    w.kill()


@pytest.fixture(scope="module")
def wstub(worker):
    ch = grpc.insecure_channel(worker.address)
    yield pb_grpc.WorkerStub(ch)
    ch.close()


def good_generate(wstub) -> str:
    msgs = list(wstub.Generate(pb.GenerateRequest(prompt=pb.Prompt(text="The sky is"),
                                                  sampling=pb.SamplingParams(max_tokens=2)), timeout=60))
    assert msgs[-1].HasField("final")
    return "".join(m.text_delta for m in msgs)


# -- the caps table over real gRPC ------------------------------------------------------------------
def _gen(prompt=None, **sampling):
    return pb.GenerateRequest(prompt=prompt or pb.Prompt(text="hi"), sampling=pb.SamplingParams(**{"max_tokens": 2,
                                                                                                  **sampling}))


CAPS = [
    ("Generate", _gen(pb.Prompt(text="x" * (L.MAX_PROMPT_CHARS + 1))), "prompt.text"),
    ("Generate", _gen(pb.Prompt(token_ids=pb.TokenIds(ids=[1] * (L.MAX_PROMPT_TOKEN_IDS + 1)))), "prompt.token_ids"),
    ("Generate", _gen(pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="a")]
                                                   * (L.MAX_MESSAGES + 1)))), "prompt.chat.messages"),
    ("Generate", _gen(stop=["s"] * (L.MAX_STOP + 1)), "sampling.stop"),
    ("Generate", _gen(stop=["s" * (L.MAX_STOP_CHARS + 1)]), "sampling.stop[0]"),
    ("Generate", _gen(temperature=math.nan), "sampling.temperature"),
    ("Generate", _gen(max_tokens=L.MAX_TOKENS + 1), "sampling.max_tokens"),
    ("Generate", pb.GenerateRequest(request_id="r" * (L.MAX_REQUEST_ID_CHARS + 1), prompt=pb.Prompt(text="hi"),
                                    sampling=pb.SamplingParams(max_tokens=2)), "request_id"),
    ("Score", pb.ScoreRequest(prompt=pb.Prompt(text="hi"), candidate_ids=[1] * (L.MAX_CANDIDATE_IDS + 1)),
     "candidate_ids"),
    ("Score", pb.ScoreRequest(prompt=pb.Prompt(text="hi"), top_k=L.MAX_TOP_K + 1), "top_k"),
    ("HiddenState", pb.HiddenStateRequest(prompts=[pb.Prompt(text="hi")] * (L.MAX_HIDDEN_STATE_PROMPTS + 1)), "prompts"),
    ("HiddenState", pb.HiddenStateRequest(prompts=[pb.Prompt(text="hi")], layers=list(range(L.MAX_LAYERS + 1))),
     "layers"),
    ("HiddenState", pb.HiddenStateRequest(prompts=[pb.Prompt(text="hi")], layers=[10_000]), "out of range"),
    ("Tokenize", pb.TokenizeRequest(prompt=pb.Prompt(text="x" * (L.MAX_PROMPT_CHARS + 1))), "prompt.text"),
]


@pytest.mark.parametrize("rpc,request_msg,field", CAPS, ids=[f"{c[0]}-{c[2]}" for c in CAPS])
def test_worker_caps_answer_invalid_argument_naming_the_field(wstub, rpc, request_msg, field):
    with pytest.raises(grpc.RpcError) as err:
        out = getattr(wstub, rpc)(request_msg, timeout=60)
        if rpc == "Generate":
            list(out)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert field in err.value.details()


# -- worker: fuzzed requests ------------------------------------------------------------------------
@st.composite
def worker_requests(draw):
    kind = draw(st.sampled_from(["text", "ids", "chat", "none"]))
    if kind == "text":
        prompt = pb.Prompt(text=draw(TEXT))
    elif kind == "ids":
        prompt = pb.Prompt(token_ids=pb.TokenIds(ids=draw(st.lists(st.integers(-5, 60_000), max_size=8))))
    elif kind == "chat":
        prompt = pb.Prompt(chat=pb.ChatPrompt(
            messages=[pb.ChatMessage(role=draw(st.sampled_from(["user", "assistant", "system", "x"])),
                                     content=draw(TEXT)) for _ in range(draw(st.integers(0, 3)))],
            add_generation_prompt=draw(st.booleans()), continue_final_message=draw(st.booleans())))
    else:
        prompt = pb.Prompt()
    sampling = pb.SamplingParams(max_tokens=draw(st.integers(-1, 4)),
                                 temperature=draw(st.one_of(st.floats(0, 2, width=32), st.floats(width=32))),
                                 top_p=draw(st.one_of(st.floats(0, 1, width=32), st.floats(width=32))),
                                 stop=draw(st.lists(TEXT, max_size=3)))
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(0, 2**31))
    return pb.GenerateRequest(prompt=prompt, sampling=sampling)


@LIVE
@given(worker_requests())
def test_worker_answers_or_refuses_every_fuzzed_generate(wstub, req):
    try:
        msgs = list(wstub.Generate(req, timeout=60))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details(), req)
        assert e.details()
        return
    assert msgs and msgs[-1].HasField("final")
    assert msgs[-1].final.usage.generated_tokens <= req.sampling.max_tokens


@LIVE
@given(st.binary(max_size=120))
def test_worker_survives_arbitrary_bytes_as_a_generate_request(worker, data):
    """Raw bytes on the wire: the worker parses or refuses them; it never dies and keeps serving."""
    with grpc.insecure_channel(worker.address) as ch:
        call = ch.unary_stream("/thinkroute.v1.Worker/Generate", request_serializer=None,
                               response_deserializer=pb.GenerateResponse.FromString)
        try:
            list(call(data, timeout=60))
        except grpc.RpcError as e:
            # Bytes that do not parse are refused by grpcio itself, before the servicer runs: UNKNOWN with
            # "Error parsing message ... Wire format was corrupt" (not INVALID_ARGUMENT; see SECURITY.md).
            assert e.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN}, e
            if e.code() == grpc.StatusCode.UNKNOWN:
                assert "error parsing message" in (e.details() or "").lower(), e.details()
    assert worker.proc.poll() is None


def test_worker_still_serves_after_the_fuzzing(wstub, worker):
    assert worker.proc.poll() is None and good_generate(wstub)


# -- the router over Ray Serve: RouteRequest and OpenAI bodies --------------------------------------
@pytest.fixture(scope="module")
def router(worker):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    config = load_config(overrides={
        "models": {"m": {"model": "smollm2-135m", "backend": "hf", "replicas": 0, "addresses": [worker.address]}},
        "router.default_model": "m", "router.roles": {}, "policy": None, "router.request_timeout_s": 60})
    gport, hport = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=hport),
                    grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=[ROUTER_SERVICER]))
        serve.run(build_app(config, {"m": [worker.address]}), name="thinkroute", route_prefix="/")
        ch = grpc.insecure_channel(f"127.0.0.1:{gport}")
        yield rpb_grpc.RouterStub(ch), f"http://127.0.0.1:{hport}"
        ch.close()
    finally:
        serve.shutdown()
        ray.shutdown()


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=False), TEXT,
                              st.sampled_from(["{question}", "{question:>999999}", "{question.__class__}"])),
                    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(TEXT, inner, max_size=2)),
                    max_leaves=5)


@st.composite
def route_requests(draw):
    r = rpb.RouteRequest(
        query=draw(TEXT), strategy=draw(st.sampled_from(["", "direct", "nope"])),
        model=draw(st.sampled_from(["", "m", "nope"])), max_tokens=draw(st.integers(-2, 4)),
        temperature=draw(st.one_of(st.floats(0, 2, width=32), st.floats(width=32))),
        top_p=draw(st.one_of(st.floats(0, 1, width=32), st.floats(width=32))),
        stop=draw(st.lists(TEXT, max_size=3)), max_latency_ms=draw(st.one_of(st.just(0.0), st.floats(-1, 1e6))),
        messages=[pb.ChatMessage(role=draw(st.sampled_from(["user", "system", "assistant", "bogus"])),
                                 content=draw(TEXT)) for _ in range(draw(st.integers(0, 2)))])
    opts = draw(st.dictionaries(st.sampled_from(["threshold", "outline_prompt", "x"]), JSON, max_size=2))
    if opts:
        r.strategy_options.update(opts)
    if draw(st.booleans()):
        r.dial = draw(st.floats())
    return r


@LIVE
@given(route_requests())
def test_router_grpc_answers_or_refuses_every_fuzzed_route_request(router, req):
    stub, _ = router
    try:
        resp = stub.Generate(req, metadata=MD, timeout=90)
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, (e.code(), e.details(), req)
        assert e.details()
        return
    assert resp.trace.plan.strategy == "direct" and resp.finish_reason


HTTP_BODY = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["thinkroute", "m", "thinkroute:dial=0.3", "thinkroute:dial=x", "nope",
                                         "strategy/direct"]), JSON),
     "messages": st.one_of(st.lists(st.fixed_dictionaries({
         "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"]),
         "content": st.one_of(TEXT, st.none(), JSON)}), max_size=2), JSON)},
    optional={"max_tokens": st.one_of(st.integers(-1, 4), JSON), "temperature": st.one_of(st.floats(), JSON),
              "top_p": st.one_of(st.floats(), JSON), "stop": st.one_of(st.lists(TEXT, max_size=2), JSON),
              "stream": st.booleans(), "n": st.integers(0, 2), "seed": st.integers(),
              "thinkroute": st.one_of(JSON, st.fixed_dictionaries({}, optional={
                  "dial": st.floats(), "strategy": st.sampled_from(["direct", "nope"]),
                  "options": st.dictionaries(st.sampled_from(["threshold", "x"]), JSON, max_size=2)}))})


@LIVE
@given(st.one_of(HTTP_BODY, JSON))
def test_router_http_answers_200_or_4xx_to_every_fuzzed_body(router, body):
    import httpx

    _, base = router
    if isinstance(body, dict) and "max_tokens" not in body:
        body["max_tokens"] = 3
    r = httpx.post(f"{base}/v1/chat/completions", content=json.dumps(body, allow_nan=True), timeout=90,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300], body)
    if r.status_code != 200:
        assert r.json()["error"]["message"]


def test_router_still_serves_after_the_fuzzing(router):
    stub, base = router
    assert stub.Generate(rpb.RouteRequest(query="Say hi.", max_tokens=2), metadata=MD, timeout=60).text is not None
    import httpx

    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"model": "thinkroute", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
