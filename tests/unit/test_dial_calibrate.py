"""The dial calibration table and dial targets (`quality >= q`, `budget <= $X per 1k requests`): building the
table from predictions + outcomes, parsing and resolving targets, and targets through the planner, the OpenAI
extension object, the gRPC request and a tenant's config (pure logic: no workers)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from router.errors import InvalidRoute
from router.policy.calibrate import (CalibrationTable, DialTarget, build_table, parse_target, resolve,
                                     wilson_interval)
from router.types import RouteQuery

PLANS = ["cheap", "mid", "best"]


def synthetic(n=400, seed=0):
    """Three plans: cheap (60 %, $0.1/1k), mid (75 %, $1/1k), best (85 %, $10/1k); the predictions know which
    queries are easy (easy queries: every plan is right)."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.6
    correct = np.zeros((n, 3))
    correct[easy] = 1
    hard = ~easy
    correct[hard, 1] = rng.random(hard.sum()) < 0.375
    correct[hard, 2] = rng.random(hard.sum()) < 0.625
    cost = np.tile([1e-4, 1e-3, 1e-2], (n, 1))
    P = np.where(easy[:, None], 0.95, [0.05, 0.4, 0.6])
    return P, cost.copy(), correct, cost


def test_table_spans_cheapest_to_best_and_shares_sum_to_one():
    P, C, correct, cost = synthetic()
    t = build_table(P, C, correct, cost, PLANS)
    assert t.points[0].share["cheap"] == 1.0 and t.points[-1].dial == 1.0
    assert t.best_plan == "best" and t.points[-1].accuracy == pytest.approx(t.best_accuracy)
    for p in t.points:
        assert sum(p.share.values()) == pytest.approx(1.0)
    costs = [p.cost_per_1k for p in t.points]
    assert costs == sorted(costs)  # a higher dial never buys cheaper plans here
    again = CalibrationTable.from_dict(json.loads(t.to_json()))
    assert again.points[5] == t.points[5]


@pytest.mark.parametrize("text,want", [
    ("quality >= 0.95", DialTarget(quality=0.95)), ("quality>=95%", DialTarget(quality=0.95)),
    ("budget <= $2.5 per 1k requests", DialTarget(budget_per_1k=2.5)), ("budget <= 3", DialTarget(budget_per_1k=3.0)),
    ("budget <= $0.4/1k", DialTarget(budget_per_1k=0.4)),
])
def test_parse_target(text, want):
    assert parse_target(text) == want


@pytest.mark.parametrize("text", ["quality > 0.95", "quality >= 1.5", "budget <= -1", "cost <= 3", "", "x" * 100,
                                  "quality >= 0"])
def test_bad_targets_name_the_forms(text):
    with pytest.raises(InvalidRoute):
        parse_target(text)


def test_resolve_quality_and_budget():
    P, C, correct, cost = synthetic()
    t = build_table(P, C, correct, cost, PLANS)
    pt, why = resolve(t, DialTarget(quality=0.95))
    assert pt.accuracy >= 0.95 * t.best_accuracy and "cheapest" in why
    cheaper = [p for p in t.points if p.cost_per_1k < pt.cost_per_1k]
    assert all(p.accuracy < 0.95 * t.best_accuracy for p in cheaper)
    pt, why = resolve(t, DialTarget(budget_per_1k=1.0))
    assert pt.cost_per_1k <= 1.0
    assert all(p.accuracy <= pt.accuracy for p in t.points if p.cost_per_1k <= 1.0)
    pt, why = resolve(t, DialTarget(budget_per_1k=1e-6))  # below every point: the cheapest, and it says so
    assert pt.share["cheap"] == 1.0 and "every calibrated point costs more" in why


def test_wilson_interval():
    lo, hi = wilson_interval(80, 100)
    assert lo < 0.8 < hi and hi - lo < 0.17
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    P, C, correct, cost = synthetic()
    (d / "dial_calibration.json").write_text(build_table(P, C, correct, cost, PLANS).to_json())
    return d


def planner_for(table_dir, **tenant):
    from router.config import load_config
    from router.planner import DialStore, Planner
    from router.policy.planning import PlanningPolicy

    over = {"policy.calibration": str(table_dir), "policy.feedback.enabled": False, "policy.artifact": None}  # priors
    if tenant:
        over["auth.tenants.acme"] = {"api_key_sha256": "0" * 64, **tenant}
    cfg = load_config(overrides=over)
    return Planner(cfg, DialStore(cfg.dial.default, cfg.dial.tenants), PlanningPolicy(cfg))


async def test_request_targets_resolve_on_the_table_and_the_trace_says_so(table_dir):
    pl = planner_for(table_dir)
    table = pl.policy.calibration
    plan = await pl.plan(RouteQuery(query="q?", quality_target=0.95))
    want, _ = resolve(table, DialTarget(quality=0.95))
    assert plan.dial == want.dial and plan.candidates["dial_target"]["target"] == "quality >= 0.95"
    assert "quality >= 0.95" in plan.reason
    plan = await pl.plan(RouteQuery(query="q?", budget_per_1k=1.0))
    assert plan.dial == resolve(table, DialTarget(budget_per_1k=1.0))[0].dial
    with pytest.raises(InvalidRoute, match="set one of"):
        await pl.plan(RouteQuery(query="q?", dial=0.3, quality_target=0.9))
    with pytest.raises(InvalidRoute):
        await pl.plan(RouteQuery(query="q?", quality_target=1.5))


async def test_a_target_without_calibration_is_a_400_naming_the_fix():
    from router.config import load_config
    from router.planner import DialStore, Planner
    from router.policy.planning import PlanningPolicy

    cfg = load_config(overrides={"policy.feedback.enabled": False})
    pl = Planner(cfg, DialStore(0.5), PlanningPolicy(cfg))
    with pytest.raises(InvalidRoute, match="dial calibrate"):
        await pl.plan(RouteQuery(query="q?", quality_target=0.95))


async def test_tenant_target_applies_when_the_request_sets_none(table_dir):
    pl = planner_for(table_dir, dial_target="budget <= $0.5 per 1k requests")
    plan = await pl.plan(RouteQuery(query="q?", tenant="acme"))
    assert plan.candidates["dial_target"]["target"] == "budget <= $0.5 per 1k requests"
    plan = await pl.plan(RouteQuery(query="q?", tenant="acme", dial=0.9))  # the request's dial wins
    assert plan.dial == 0.9 and "dial_target" not in plan.candidates


def test_tenant_target_is_checked_at_load():
    from router.config import load_config

    with pytest.raises(SystemExit, match="not understood|dial_target"):
        load_config(overrides={"auth.tenants.acme": {"api_key_sha256": "0" * 64, "dial_target": "cheap please"}})
    with pytest.raises(SystemExit, match="not both"):
        load_config(overrides={"auth.tenants.acme": {"api_key_sha256": "0" * 64, "dial": 0.2,
                                                     "dial_target": "quality >= 0.9"}})


def test_wire_formats_carry_targets():
    from thinkroute.v1 import router_pb2 as rpb

    from router.config import load_config
    from router.http_api import ApiError, ChatCompletionRequest, Target, to_route_query
    from router.router_wire import query_from_pb

    q = query_from_pb(rpb.RouteRequest(query="q", quality_target=0.95, task="t"))
    assert q.quality_target == pytest.approx(0.95) and q.budget_per_1k is None and q.task == "t"
    assert query_from_pb(rpb.RouteRequest(query="q")).quality_target is None
    msgs = [{"role": "user", "content": "q"}]
    req = ChatCompletionRequest.model_validate({"model": "thinkroute", "messages": msgs,
                                                "thinkroute": {"target": "budget <= $2 per 1k requests"}})
    q = to_route_query(req, Target(), "")
    assert q.budget_per_1k == 2.0 and q.quality_target is None
    req = ChatCompletionRequest.model_validate({"model": "thinkroute", "messages": msgs, "thinkroute": {"quality_target": 0.9}})
    assert to_route_query(req, Target(), "").quality_target == 0.9
    req = ChatCompletionRequest.model_validate({"model": "thinkroute", "messages": msgs, "thinkroute": {"target": "nonsense"}})
    with pytest.raises(ApiError) as e:
        to_route_query(req, Target(), "")
    assert e.value.status == 400 and e.value.param == "thinkroute.target"
    assert load_config  # imported for symmetry with the other tests
