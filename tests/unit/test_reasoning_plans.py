"""Plans that differ only by reasoning mode: one model, `direct`, options {thinking: ...}; the dial trades the
thinking tokens (in the plan's expected generated tokens) against expected quality (pure logic, no workers)."""
from __future__ import annotations

import pytest

from router.config import load_config
from router.planner import DialStore, Planner
from router.policy.planning import PlanningPolicy
from router.types import RouteQuery

CANDIDATES = {
    "smollm2-135m:no_think": {"strategy": "direct", "model": "smollm2-135m", "options": {"thinking": "off"}},
    "smollm2-135m:budget=512": {"strategy": "direct", "model": "smollm2-135m", "options": {"thinking": "budget=512"}},
    "smollm2-135m:effort=high": {"strategy": "direct", "model": "smollm2-135m", "options": {"thinking": "effort=high"}},
}
# generated tokens include the thinking span: more thinking, more cost, higher prior quality
PRIORS = {
    "smollm2-135m:no_think": {"p_correct": 0.06, "tokens": {"smollm2-135m": 20}},
    "smollm2-135m:budget=512": {"p_correct": 0.09, "tokens": {"smollm2-135m": 540}},
    "smollm2-135m:effort=high": {"p_correct": 0.10, "tokens": {"smollm2-135m": 2000}},
}


#: Stand-in delimiters on the embedded drafter (it has no thinking config of its own): every mode served.
THINKING = {"start": "<reasoning>", "end": "</reasoning>", "modes": ["off", "on", "budget", "effort"], "off": "closed_span"}


def _config(candidates=CANDIDATES, priors=PRIORS, thinking=THINKING):
    return load_config(overrides={"policy.candidates": candidates, "policy.priors": priors, "policy.artifact": None,
                                  "models.smollm2-135m.thinking": thinking,
                                  "policy.prices": {"smollm2-135m": {"in": 1.0, "out": 5.0}, "gemma3-270m": 0.1}})


@pytest.fixture(scope="module")
def planner():
    cfg = _config()
    return Planner(cfg, DialStore(cfg.dial.default), PlanningPolicy(cfg)), cfg


async def test_the_dial_moves_across_thinking_levels_of_one_model(planner):
    pl, _ = planner
    chosen = []
    for d in (0.0, 0.5, 1.0):
        plan = await pl.plan(RouteQuery(query="Who wrote the Principia?", dial=d))
        assert plan.models == {"model": "smollm2-135m"} and plan.strategy.name == "direct"
        chosen.append(plan.strategy.options.thinking)
    assert chosen[0] == "off" and chosen[-1] == "effort=high"


async def test_thinking_tokens_are_priced_at_the_output_price(planner):
    pl, _ = planner
    plan = await pl.plan(RouteQuery(query="Who wrote the Principia?", dial=1.0))
    costs = {r["plan"]: r["cost"] for r in plan.candidates["ranked"]}
    assert costs["smollm2-135m:no_think"] < costs["smollm2-135m:budget=512"] < costs["smollm2-135m:effort=high"]
    # same prompt, same model: the difference is the thinking tokens, at the output price ($5 / M)
    assert costs["smollm2-135m:effort=high"] - costs["smollm2-135m:no_think"] == pytest.approx(5.0 * (2000 - 20) / 1e6)


def test_a_bad_thinking_knob_in_a_candidate_fails_at_start_naming_it():
    from router.errors import InvalidRoute

    bad = {**CANDIDATES, "smollm2-135m:budget=512": {**CANDIDATES["smollm2-135m:budget=512"], "options": {"thinking": "budget=0"}}}
    with pytest.raises(InvalidRoute, match=r"policy.candidates.smollm2-135m:budget=512.options.*thinking"):
        PlanningPolicy(_config(candidates=bad))


def test_a_mode_the_model_cannot_serve_fails_at_start_naming_the_modes():
    from router.errors import InvalidRoute

    no_off = {**THINKING, "modes": ["on", "budget", "effort"], "off": None}
    with pytest.raises(InvalidRoute, match=r"smollm2-135m:no_think.*cannot serve thinking='off'.*budget=<N>"):
        PlanningPolicy(_config(thinking=no_off))
    # workers started elsewhere decide for themselves: no check at start
    cfg = _config(thinking=no_off)
    cfg.models["smollm2-135m"].addresses = ["127.0.0.1:1"]
    PlanningPolicy(cfg)
