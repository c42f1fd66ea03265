"""Property-based fuzzing (hypothesis) of the request boundaries, pure code only (no processes):

- worker: any GenerateRequest / ScoreRequest / HiddenStateRequest, and any byte string parsed as one,
  is either refused by workers/limits.py with InvalidRequest (INVALID_ARGUMENT) or converts to values
  inside every documented bound;
- router gRPC: any RouteRequest goes through query_from_pb -> RouterCore.validate -> Planner.plan
  (no policy: pure) and ends in a Plan or a RoutingError (a status code), never another exception;
- OpenAI HTTP: any JSON body (and some non-JSON) POSTed to /v1/chat/completions over the real ASGI
  app answers 200 or a 4xx with an OpenAI error object, never a 5xx, and the app keeps serving.

The live counterpart (real worker, real Ray Serve) is tests/integration/test_fuzz_live.py.
"""
from __future__ import annotations

import asyncio
import math

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import worker_pb2 as pb  # noqa: E402

from workers import limits as L  # noqa: E402
from workers import wire  # noqa: E402
from workers.errors import InvalidRequest  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.filter_too_much])
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
SHORT_TEXT = st.text(max_size=40)


def near(bound: int) -> st.SearchStrategy[int]:
    """Sizes that matter: tiny, around the bound, a bit past it."""
    return st.one_of(st.integers(0, 4), st.integers(max(0, bound - 2), bound + 2))


@st.composite
def long_text(draw, bound: int) -> str:
    n = draw(near(bound))
    return draw(st.sampled_from("ab c\n\u00e9\u4e00")) * n if n > 40 else draw(st.text(max_size=n))


@st.composite
def prompts(draw) -> pb.Prompt:
    kind = draw(st.sampled_from(["text", "ids", "chat", "none"]))
    if kind == "text":
        return pb.Prompt(text=draw(st.one_of(SHORT_TEXT, long_text(L.MAX_PROMPT_CHARS))))
    if kind == "ids":
        n = draw(near(L.MAX_PROMPT_TOKEN_IDS))
        return pb.Prompt(token_ids=pb.TokenIds(ids=[draw(INT32)] * n))
    if kind == "chat":
        n = draw(st.one_of(st.integers(0, 4), near(L.MAX_MESSAGES)))
        role = draw(st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), SHORT_TEXT))
        content = draw(st.one_of(SHORT_TEXT, long_text(L.MAX_PROMPT_CHARS // max(n, 1))))
        return pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role=role, content=content)] * n,
                                            add_generation_prompt=draw(st.booleans()),
                                            continue_final_message=draw(st.booleans())))
    return pb.Prompt()


@st.composite
def samplings(draw) -> pb.SamplingParams:
    s = pb.SamplingParams(
        max_tokens=draw(st.one_of(INT32, near(L.MAX_TOKENS))), temperature=draw(FLOAT32), top_p=draw(FLOAT32),
        stop=draw(st.one_of(st.lists(SHORT_TEXT, max_size=4),
                            st.builds(lambda n, x: [x] * n, near(L.MAX_STOP), st.text(min_size=1, max_size=3)),
                            st.builds(lambda n: ["s" * n], near(L.MAX_STOP_CHARS)))))
    if draw(st.booleans()):
        s.seed = draw(st.integers(-(2**63), 2**63 - 1))
    return s


@st.composite
def constraints(draw):
    kind = draw(st.sampled_from(["json_schema", "regex", "grammar", "choice", "none"]))
    if kind == "choice":
        n = draw(st.one_of(st.integers(0, 3), near(L.MAX_CHOICES)))
        x = draw(st.one_of(SHORT_TEXT, long_text(L.MAX_CHOICE_CHARS)))
        return pb.GenerateRequest.Constraint(choice=pb.GenerateRequest.ChoiceList(choices=[x] * n))
    if kind == "none":
        return pb.GenerateRequest.Constraint()
    bound = L.MAX_REGEX_CHARS if kind == "regex" else L.MAX_CONSTRAINT_CHARS
    return pb.GenerateRequest.Constraint(**{kind: draw(st.one_of(SHORT_TEXT, long_text(bound)))})


def _generate_request(rid, p, s, c) -> pb.GenerateRequest:
    r = pb.GenerateRequest(request_id=rid, prompt=p, sampling=s)
    if c is not None:
        r.constraint.CopyFrom(c)
    return r


generate_requests = st.builds(_generate_request, st.one_of(SHORT_TEXT, long_text(L.MAX_REQUEST_ID_CHARS)), prompts(),
                              samplings(), st.one_of(st.none(), constraints()))


def assert_converted_within_bounds(r: pb.GenerateRequest) -> None:
    s = wire.sampling_from_pb(r.sampling)
    if r.HasField("constraint") and r.constraint.WhichOneof("kind") == "choice":
        assert 0 < len(r.constraint.choice.choices) <= L.MAX_CHOICES
    assert 0 < s.max_tokens <= L.MAX_TOKENS
    assert math.isfinite(s.temperature) and 0 <= s.temperature <= L.MAX_TEMPERATURE
    assert 0 < s.top_p <= 1
    assert len(s.stop) <= L.MAX_STOP and all(0 < len(x) <= L.MAX_STOP_CHARS for x in s.stop)
    p = wire.prompt_from_pb(r.prompt)
    assert len(p.text or "") <= L.MAX_PROMPT_CHARS
    assert len(p.token_ids or ()) <= L.MAX_PROMPT_TOKEN_IDS
    assert len(p.messages or ()) <= L.MAX_MESSAGES
    assert sum(len(m.content) for m in p.messages or ()) <= L.MAX_PROMPT_CHARS


@FUZZ
@given(generate_requests)
def test_any_generate_request_is_refused_clearly_or_within_bounds(r):
    try:
        L.check_generate(r)
    except InvalidRequest as e:
        assert str(e) and e.grpc_code == "INVALID_ARGUMENT"
        return
    assert_converted_within_bounds(r)


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_parse_to_a_message_that_is_refused_or_within_bounds(data):
    from google.protobuf.message import DecodeError

    for cls, check in ((pb.GenerateRequest, L.check_generate), (pb.ScoreRequest, L.check_score),
                       (pb.HiddenStateRequest, L.check_hidden_state)):
        try:
            msg = cls.FromString(data)
        except DecodeError:
            continue
        try:
            check(msg)
        except InvalidRequest:
            continue
        if cls is pb.GenerateRequest:
            assert_converted_within_bounds(msg)


@FUZZ
@given(prompts(), st.one_of(st.none(), SHORT_TEXT, long_text(L.MAX_PROMPT_CHARS)),
       st.one_of(st.none(), near(L.MAX_PROMPT_TOKEN_IDS)), INT32, near(L.MAX_CANDIDATE_IDS))
def test_any_score_request_is_refused_clearly_or_within_bounds(prompt, cont_text, n_cont_ids, top_k, n_candidates):
    r = pb.ScoreRequest(prompt=prompt, top_k=top_k, candidate_ids=[1] * n_candidates)
    if cont_text is not None:
        r.continuation_text = cont_text
    elif n_cont_ids is not None:
        r.continuation_ids.CopyFrom(pb.TokenIds(ids=[2] * n_cont_ids))
    try:
        L.check_score(r)
    except InvalidRequest as e:
        assert e.grpc_code == "INVALID_ARGUMENT"
        return
    assert 0 <= r.top_k <= L.MAX_TOP_K and len(r.candidate_ids) <= L.MAX_CANDIDATE_IDS
    assert len(r.continuation_text) <= L.MAX_PROMPT_CHARS and len(r.continuation_ids.ids) <= L.MAX_PROMPT_TOKEN_IDS


@FUZZ
@given(st.lists(prompts(), max_size=3), near(L.MAX_HIDDEN_STATE_PROMPTS), st.lists(INT32, max_size=4),
       near(L.MAX_LAYERS), INT32, st.integers(1, 64))
def test_any_hidden_state_request_is_refused_clearly_or_within_bounds(ps, n_more, layers, n_layers, pooling, depth):
    r = pb.HiddenStateRequest(prompts=ps + [pb.Prompt(text="x")] * (n_more if ps else 0),
                              layers=layers + list(range(n_layers if not layers else 0)), pooling=pooling)
    try:
        L.check_hidden_state(r)
        L.check_layers_range(r.layers, depth)
    except InvalidRequest as e:
        assert e.grpc_code == "INVALID_ARGUMENT"
        return
    assert 1 <= len(r.prompts) <= L.MAX_HIDDEN_STATE_PROMPTS and len(r.layers) <= L.MAX_LAYERS
    assert r.pooling in L.POOLINGS and all(-(depth + 1) <= x <= depth for x in r.layers)
    wire.pooling_from_pb(r.pooling)


# -- router gRPC: RouteRequest -------------------------------------------------------------------
KNOBS = ["threshold", "max_steps", "max_step_tokens", "score_mode", "triggers", "outline_prompt", "answer_tokens",
         "cot_tokens", "takeover", "x"]
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), SHORT_TEXT,
                      st.sampled_from(["{question}", "{question:>99}", "{0}", "{question.__class__}", "%s", "}{"]))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(SHORT_TEXT, inner, max_size=3)), max_leaves=8)
STRATEGY_NAMES = ["", "direct", "specreason", "specthink", "cothink", "hawkeye", "nope", "{x}"]
MODEL_NAMES = ["", "smollm2-135m", "gemma3-270m", "nope"]


@st.composite
def route_requests(draw) -> rpb.RouteRequest:
    r = rpb.RouteRequest(
        request_id=draw(SHORT_TEXT), query=draw(st.one_of(SHORT_TEXT, long_text(L.MAX_PROMPT_CHARS))),
        messages=[pb.ChatMessage(role=draw(st.sampled_from(["user", "system", "assistant", "tool", "bogus", ""])),
                                  content=draw(SHORT_TEXT)) for _ in range(draw(st.integers(0, 3)))],
        strategy=draw(st.sampled_from(STRATEGY_NAMES)), model=draw(st.sampled_from(MODEL_NAMES)),
        max_tokens=draw(INT32), temperature=draw(FLOAT32), top_p=draw(FLOAT32),
        stop=draw(st.lists(SHORT_TEXT, max_size=3)), tenant=draw(SHORT_TEXT),
        max_cost=draw(st.floats()), max_latency_ms=draw(st.floats()),
    )
    options = draw(st.dictionaries(st.sampled_from(KNOBS), JSON, max_size=3))
    if options:
        r.strategy_options.update(options)
    if draw(st.booleans()):
        r.dial = draw(st.floats())
    if draw(st.booleans()):
        r.seed = draw(st.integers(-(2**63), 2**63 - 1))
    return r


@pytest.fixture(scope="module")
def core():
    from router.config import load_config
    from router.service import RouterCore

    return RouterCore(load_config(overrides={"policy": None}), {"smollm2-135m": ["127.0.0.1:9"],
                                                                 "gemma3-270m": ["127.0.0.1:9"]})


@FUZZ
@given(route_requests())
def test_any_route_request_plans_or_fails_with_a_status(core, r):
    from router.errors import RoutingError
    from router.router_wire import query_from_pb

    try:
        q = query_from_pb(r)
        core.validate(q)
        plan = asyncio.run(core.planner.plan(q, core.pool))
    except RoutingError as e:
        assert e.grpc_code in {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
                               "RESOURCE_EXHAUSTED"}, (e.grpc_code, e)
        assert str(e)
        return
    assert q.max_tokens > 0 and q.temperature >= 0 and 0 < q.top_p <= 1
    assert 0 <= plan.dial <= 1 and plan.models


# -- OpenAI HTTP bodies --------------------------------------------------------------------------
class EchoCore:
    """Runs the real boundary checks (RouterCore.validate, Planner.plan) and answers without models."""

    def __init__(self, real) -> None:
        self.real, self.config, self.pool = real, real.config, real.pool

    async def route(self, query, emit=None):
        from router.types import RouteResult

        self.real.validate(query)
        plan = await self.real.planner.plan(query, self.real.pool)
        if emit is not None:
            await emit("ok")
        return RouteResult(request_id=query.request_id, text="ok", final_answer="", finish_reason="stop",
                           trace={"plan": plan.to_dict(), "calls": [], "usage": [], "stage_ms": {}, "details": {}})


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "x"]),
                                 "content": st.one_of(SHORT_TEXT, st.none(), st.just([{"type": "text", "text": "hi"}]),
                                                      JSON)})
BODY = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["thinkroute", "thinkroute:dial=0.2", "thinkroute:dial=9", "smollm2-135m",
                                         "strategy/specreason", "strategy/{x}", "nope"]), JSON)},
    optional={
        "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
        "max_tokens": st.one_of(st.integers(-5, 10**12), JSON), "temperature": st.one_of(st.floats(), JSON),
        "top_p": st.one_of(st.floats(), JSON), "stop": st.one_of(st.lists(SHORT_TEXT, max_size=3), JSON),
        "n": st.one_of(st.integers(-2, 3), JSON), "stream": st.one_of(st.booleans(), JSON),
        "seed": st.one_of(st.integers(), JSON), "tools": JSON, "logprobs": JSON, "response_format": JSON,
        "thinkroute": st.one_of(st.fixed_dictionaries({}, optional={
            "dial": st.one_of(st.floats(), JSON), "strategy": st.one_of(st.sampled_from(STRATEGY_NAMES), JSON),
            "options": st.one_of(st.dictionaries(st.sampled_from(KNOBS), JSON, max_size=3), JSON),
            "trace": JSON, "max_cost": JSON, "max_latency_ms": JSON}), JSON),
    })


@pytest.fixture(scope="module")
def http_client(core):
    from starlette.testclient import TestClient

    from router.http_api import OpenAIFrontend, build_http_app

    frontend = OpenAIFrontend(EchoCore(core), core.config, {})
    return TestClient(build_http_app(frontend), client=("127.0.0.1", 50000), raise_server_exceptions=False)


def _post(client, content: bytes):
    return client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(BODY, JSON))
def test_any_json_body_gets_200_or_a_4xx_openai_error(http_client, body):
    import json

    resp = _post(http_client, json.dumps(body, allow_nan=True).encode())
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code != 200:
        err = resp.json()["error"]
        assert err["message"] and "Traceback" not in err["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_any_bytes_body_gets_a_4xx_and_the_app_keeps_serving(http_client, raw):
    resp = _post(http_client, raw)
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    ok = _post(http_client, b'{"model": "thinkroute", "messages": [{"role": "user", "content": "hi"}]}')
    assert ok.status_code == 200, ok.text
