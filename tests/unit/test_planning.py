"""The live planning policy on the embedded config's candidates and priors (`policy.artifact: null`: the shipped
artifact is replaced by the priors it falls back to; pure logic, no workers)."""
from __future__ import annotations

import pytest

from router.config import load_config
from router.errors import InvalidRoute
from router.planner import DialStore, Planner
from router.policy.planning import PlanningPolicy
from router.types import RouteQuery


@pytest.fixture(scope="module")
def planner():
    cfg = load_config(overrides={"policy.artifact": None})
    return Planner(cfg, DialStore(cfg.dial.default), PlanningPolicy(cfg)), cfg


async def test_dial_zero_is_the_cheapest_and_one_the_best_predicted(planner):
    pl, cfg = planner
    priors = cfg.policy.priors
    cheap = await pl.plan(RouteQuery(query="What is 2+3?", dial=0.0))
    ranked = cheap.candidates["ranked"]
    assert ranked[0]["cost"] == min(r["cost"] for r in ranked)
    assert cheap.models == {"model": cfg.policy.candidates["drafter"].model}
    best = await pl.plan(RouteQuery(query="What is 2+3?", dial=1.0))
    assert best.candidates["ranked"][0]["p_correct"] == max(p.p_correct for p in priors.values())


async def test_higher_dial_never_lowers_predicted_quality(planner):
    pl, _ = planner
    quality = []
    for d in [i / 20 for i in range(21)]:
        plan = await pl.plan(RouteQuery(query="A question of some length about apples and pears?", dial=d))
        quality.append(plan.candidates["ranked"][0]["p_correct"])
    assert quality == sorted(quality)


async def test_hard_cost_limit_rejects_expensive_plans_and_says_why(planner):
    pl, _ = planner
    all_plans = (await pl.plan(RouteQuery(query="q?", dial=1.0))).candidates["ranked"]
    limit = sorted(r["cost"] for r in all_plans)[1]  # only the two cheapest fit
    plan = await pl.plan(RouteQuery(query="q?", dial=1.0, max_cost=limit))
    assert len(plan.candidates["rejected"]) == len(all_plans) - 2
    assert all("max_cost" in r["reason"] for r in plan.candidates["rejected"])
    with pytest.raises(InvalidRoute, match="no plan meets the limits"):
        await pl.plan(RouteQuery(query="q?", dial=1.0, max_cost=1e-12))


async def test_a_fixed_strategy_bypasses_the_policy(planner):
    pl, _ = planner
    plan = await pl.plan(RouteQuery(query="q?", model="gemma3-270m", dial=0.0))
    assert plan.reason.startswith("fixed by the request") and plan.models == {"model": "gemma3-270m"}


def test_bad_policy_config_fails_at_load():
    with pytest.raises(SystemExit, match="policy"):
        load_config(overrides={"policy.candidates.x": {"strategy": "direct", "model": "smollm2-135m", "bogus": 1}})
