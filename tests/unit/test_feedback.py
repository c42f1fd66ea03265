"""Feedback: the decision log (memory store), verdicts, the online per-task correction and POST /v1/feedback
(pure logic: the embedded config's priors policy, a fake pool, no workers, no Redis)."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from router.config import load_config
from router.decision_log import Decision, MemoryDecisionLog, Outcome
from router.errors import InvalidRoute, NotFound
from router.feedback import FeedbackLoop, decision_log_to_outcomes, verdict
from router.policy.planning import PlanningPolicy
from router.trace import ModelCallRecord
from router.types import Completion, ModelInfo, RouteQuery

LOCAL = ("127.0.0.1", 50000)


class FakePool:
    def has_live_replica(self, model, **kw):
        return True

    async def info(self, model, **kw):
        return ModelInfo(model, "tok", 2048, True, "fake", "cpu")

    async def generate(self, model, prompt, sampling, *, deadline, on_delta=None):
        return Completion("5", [1], "stop", 3, 1), ModelCallRecord(model=model, role="", kind="generate", replica="r")

    async def score(self, *a, **k):  # pair strategies are not chosen in these tests
        raise AssertionError("not expected")

    async def close(self):
        pass


def make_core(tmp_path=None, store=None):
    from router.service import RouterCore

    # Two direct plans (a fake pool answers generate only): the drafter (cheaper, prior 0.05) and the reasoner (0.07).
    over = {"policy.feedback.store": "memory", "policy.artifact": None,  # the priors, not the shipped artifact
            "policy.candidates": {"drafter": {"strategy": "direct", "model": "smollm2-135m"},
                                  "reasoner": {"strategy": "direct", "model": "gemma3-270m"}},
            "policy.priors": {"drafter": {"p_correct": 0.05, "tokens": {"smollm2-135m": 128}},
                              "reasoner": {"p_correct": 0.07, "tokens": {"gemma3-270m": 128}}}}
    if tmp_path is not None:
        over["policy.feedback.dir"] = str(tmp_path)
    cfg = load_config(overrides=over)
    core = RouterCore(cfg, {m: ["127.0.0.1:1"] for m in cfg.models}, policy=PlanningPolicy(cfg))
    core.pool = FakePool()
    if store is not None:
        core.feedback.log = store
    return core


def test_verdict_takes_exactly_one_of_score_and_correct():
    assert verdict(correct=True) == 1.0 and verdict(correct=False) == 0.0 and verdict(score=0.25) == 0.25
    for bad in [dict(), dict(score=0.5, correct=True), dict(score=1.5), dict(score=True), dict(correct="yes"),
                dict(score="0.5")]:
        with pytest.raises(InvalidRoute):
            verdict(**bad)


async def test_memory_log_expires_and_caps():
    now = [1000.0]
    log = MemoryDecisionLog(ttl_s=10, max_decisions=2, max_outcomes=3, clock=lambda: now[0])
    for i in range(3):
        await log.put(Decision(request_id=f"r{i}", plan="p"))
    assert await log.get("r0") is None and (await log.get("r2")).plan == "p"  # capped
    now[0] += 11
    assert await log.get("r2") is None  # expired
    for i in range(5):
        await log.add_outcome(Outcome(Decision(request_id=f"r{i}", plan="p"), 1.0, "t"))
    got, nxt = await log.outcomes_since(0)
    assert nxt == 5 and [o.decision.request_id for o in got] == ["r2", "r3", "r4"]
    got, _ = await log.outcomes_since(4)
    assert [o.decision.request_id for o in got] == ["r4"]


async def test_feedback_moves_the_task_correction_and_the_choice():
    core = make_core()
    q = lambda: RouteQuery(query="What is 12*7?", dial=1.0, task="arith", tenant="")  # noqa: E731
    first = await core.route(q())
    plan_x = first.trace["plan"]["plan"]
    n = 0
    while True:
        r = await core.route(q())
        if r.trace["plan"]["plan"] != plan_x:
            break
        out = await core.feedback.feedback(r.request_id, "", correct=False)
        assert out["plan"] == plan_x and out["p_correct_after"] < out["p_correct_before"]
        n += 1
        assert n < 50
    # another task is unaffected
    other = await core.route(RouteQuery(query="What is 12*7?", dial=1.0, task="other"))
    assert other.trace["plan"]["plan"] == plan_x
    assert 1 <= n <= 20, n
    print(f'plan {plan_x} abandoned for task arith after {n} negative feedbacks')


async def test_unknown_and_foreign_ids_are_not_found():
    core = make_core()
    r = await core.route(RouteQuery(query="q?", dial=0.5, tenant="a"))
    with pytest.raises(NotFound):
        await core.feedback.feedback("nope", "a", correct=True)
    with pytest.raises(NotFound):
        await core.feedback.feedback(r.request_id, "b", correct=True)  # another tenant's id: same answer
    with pytest.raises(InvalidRoute):
        await core.feedback.feedback("x" * 500, "a", correct=True)
    assert (await core.feedback.feedback(r.request_id, "a", score=0.5))["task"] == ""


async def test_outcomes_are_restored_from_the_store_and_from_the_dir(tmp_path):
    core = make_core(tmp_path)
    for _ in range(3):
        r = await core.route(RouteQuery(query="q?", dial=1.0, task="t"))
        await core.feedback.feedback(r.request_id, "", correct=False)
    learned = core.feedback.corrections.summary()
    assert sum(learned["t"].values()) == 3
    # same store (another replica, or a restart with Redis): replayed
    again = FeedbackLoop(core.config, core.feedback.log)
    assert await again.start() == 3 and again.corrections.summary() == learned
    # a fresh store: the dir's outcomes.jsonl is replayed
    fresh = FeedbackLoop(core.config, MemoryDecisionLog(60, 10, 10))
    assert await fresh.start() == 3 and fresh.corrections.summary() == learned


async def test_log_rows_for_training():
    core = make_core()
    r = await core.route(RouteQuery(query="What is 2+2?", dial=0.0, task="t"))
    await core.feedback.feedback(r.request_id, "", correct=True)
    outcomes, _ = await core.feedback.log.outcomes_since(0)
    rows = decision_log_to_outcomes(outcomes)
    assert rows[0]["question"] == "What is 2+2?" and rows[0]["task"] == "t"
    assert rows[0]["plans"][r.trace["plan"]["plan"]]["is_correct"] is True


def test_http_feedback_route_answers_openai_shapes():
    from router.http_api import OpenAIFrontend, build_http_app

    core = make_core()
    client = TestClient(build_http_app(OpenAIFrontend(core, core.config, {})), client=LOCAL)
    chat = client.post("/v1/chat/completions", json={"model": "thinkroute", "messages": [{"role": "user", "content": "2+2?"}],
                                                     "thinkroute": {"task": "math"}})
    assert chat.status_code == 200, chat.text
    rid = chat.headers["x-request-id"]
    ok = client.post("/v1/feedback", json={"request_id": rid, "correct": False})
    assert ok.status_code == 200, ok.text
    assert ok.json()["task"] == "math" and ok.json()["plan"]
    missing = client.post("/v1/feedback", json={"request_id": "unknown-id", "correct": True})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
    for body in [{"request_id": rid}, {"request_id": rid, "score": 2}, {"request_id": rid, "correct": 1},
                 {"request_id": rid, "correct": True, "extra": 1}, ["x"]]:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 400 and "error" in r.json(), (body, r.text)
    assert client.post("/v1/feedback", content=b"{nope").status_code == 400


async def test_grpc_feedback_maps_unknown_ids_to_not_found_and_records_known_ones():
    import grpc
    from thinkroute.v1 import router_pb2 as rpb

    from router.serve_app import RouterIngress

    class Ctx:
        code = details = None

        def invocation_metadata(self):
            return ()

        def peer(self):
            return "ipv4:127.0.0.1:5"

        def auth_context(self):
            return {}

        def set_code(self, c):
            self.code = c

        def set_details(self, d):
            self.details = d

        def set_trailing_metadata(self, md):
            pass

    core = make_core()
    ingress = type("Ingress", (), {"core": core})()
    ctx = Ctx()
    with pytest.raises(NotFound):
        await RouterIngress.Feedback(ingress, rpb.FeedbackRequest(request_id="nope", correct=True), ctx)
    assert ctx.code == grpc.StatusCode.NOT_FOUND and "nope" in ctx.details
    ctx = Ctx()
    with pytest.raises(InvalidRoute):
        await RouterIngress.Feedback(ingress, rpb.FeedbackRequest(request_id="x"), ctx)  # no verdict
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    tenant = core.admission.authenticate(__import__("router.admission", fromlist=["grpc_caller"]).grpc_caller(Ctx()))
    r = await core.route(RouteQuery(query="2+2?", dial=0.0, task="t", tenant=tenant))  # as admission would set it
    out = await RouterIngress.Feedback(ingress, rpb.FeedbackRequest(request_id=r.request_id, score=0.0), Ctx())
    assert out.plan == r.trace["plan"]["plan"] and out.task == "t" and out.outcomes == 1
