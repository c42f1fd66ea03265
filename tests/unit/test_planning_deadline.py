"""Planning honours the request's deadline: with a slow drafter (HiddenState or Info that takes seconds), a
request with max_latency_ms=500 waits at most its planning share in planning, then plans from the priors
(or the config default when priors do not cover every candidate), and the trace says why. Fake pool, a
real (synthetic) probe artifact."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from router.config import load_config
from router.planner import DialStore, Planner
from router.policy.planning import PlanningPolicy
from router.types import RouteQuery

DIM = 8


class SlowPool:
    """The pool methods planning calls, each taking `delay` seconds (a slow or stuck drafter)."""

    def __init__(self, hs_delay: float = 0.0, info_delay: float = 0.0) -> None:
        self.hs_delay, self.info_delay = hs_delay, info_delay
        self.cancelled = 0

    async def _sleep(self, s: float) -> None:
        try:
            await asyncio.sleep(s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def served_model_id(self, model: str, deadline: float | None = None) -> str:
        await self._sleep(self.info_delay)
        return "smollm2-135m"

    async def hidden_features(self, model, prompts, request, *, deadline):
        await self._sleep(self.hs_delay)
        rec = SimpleNamespace(latency_ms=1.0, replica="fake:1")
        return [np.ones(DIM, np.float32)], "smollm2-135m", rec


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from router.policy import Policy, SystemPrice

    cfg = load_config()
    plans = list(cfg.policy.candidates)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, DIM)).astype(np.float32)
    correct = (rng.random((60, len(plans))) < 0.5).astype(float)
    prices = {p: SystemPrice(price_in=0.1, price_out=0.1) for p in plans}
    spec = {"source": "hidden_states", "model_id": "smollm2-135m", "layers": [2], "pooling": ["last"],
            "max_tokens": None, "uncertainty": False, "prompt": "text"}
    # One generated token per plan: predicted latencies fit a 500 ms request, so the limit itself rejects nothing.
    policy = Policy.fit(X, correct, np.full_like(correct, 1.0), None, plans, prices, spec, "smollm2-135m")
    return str(policy.save(tmp_path_factory.mktemp("policy") / "artifact"))


#: Priors of short answers (predicted latency 200 + 60 x tokens ms), feasible under max_latency_ms 500.
SHORT_PRIORS = {"drafter": {"p_correct": 0.05, "tokens": {"smollm2-135m": 1}},
                "reasoner": {"p_correct": 0.07, "tokens": {"gemma3-270m": 1}},
                "specreason": {"p_correct": 0.06, "tokens": {"smollm2-135m": 1, "gemma3-270m": 1}},
                "hawkeye": {"p_correct": 0.06, "tokens": {"gemma3-270m": 1, "smollm2-135m": 1}}}


def _planner(artifact: str, **overrides):
    cfg = load_config(overrides={"policy.artifact": artifact, "policy.priors": SHORT_PRIORS, **overrides})
    return Planner(cfg, DialStore(0.5), PlanningPolicy(cfg)), cfg


@pytest.mark.parametrize("slow", ["hidden_state", "info"])
async def test_a_500ms_request_never_waits_longer_in_planning_and_falls_back_to_priors(artifact, slow):
    planner, _ = _planner(artifact)
    pool = SlowPool(hs_delay=5.0) if slow == "hidden_state" else SlowPool(info_delay=5.0)
    t0 = time.monotonic()
    plan = await planner.plan(RouteQuery(query="What is 17 * 3?", max_latency_ms=500), pool)
    waited = time.monotonic() - t0
    assert waited < 0.5, waited  # planning share 0.5 of 500 ms: ~250 ms
    assert waited >= 0.2
    info = plan.candidates["predictions"]
    assert info["kind"] == "priors" and info["probe_timeout"] is True
    assert "did not arrive within 250 ms" in info["source"] and "max_latency_ms 500" in info["source"]
    assert plan.candidates["ranked"] and plan.name in plan.candidates["ranked"][0]["plan"]
    assert pool.cancelled == 1  # the late call is cancelled, not left running


async def test_without_priors_the_late_probe_gives_the_config_default(artifact):
    planner, cfg = _planner(artifact, **{"policy.priors": {}})
    t0 = time.monotonic()
    plan = await planner.plan(RouteQuery(query="What is 17 * 3?", max_latency_ms=500), SlowPool(hs_delay=5.0))
    assert time.monotonic() - t0 < 0.5
    assert plan.strategy.name == cfg.router.default_strategy
    assert plan.candidates["predictions"]["kind"] == "default"
    assert "config default" in plan.reason and "did not arrive within 250 ms" in plan.reason


async def test_a_fast_probe_is_used_and_the_share_and_timeout_are_configurable(artifact):
    planner, _ = _planner(artifact, **{"policy.probe_budget_share": 1.0, "policy.probe_timeout_ms": 100})
    plan = await planner.plan(RouteQuery(query="What is 2 + 2?", max_latency_ms=500), SlowPool(hs_delay=0.01))
    assert plan.candidates["predictions"]["kind"] == "probe"
    # No max_latency_ms: policy.probe_timeout_ms (100 ms here) bounds the wait.
    t0 = time.monotonic()
    plan = await planner.plan(RouteQuery(query="Another question?"), SlowPool(hs_delay=5.0))
    assert time.monotonic() - t0 < 0.4
    assert "policy.probe_timeout_ms" in plan.candidates["predictions"]["source"]


def test_serve_warms_the_probe_layers_on_the_drafter(artifact):
    from router.policy.planning import warm_hidden_states

    cfg = load_config(overrides={"policy.artifact": artifact})
    assert warm_hidden_states(cfg) == ("smollm2-135m", {"hidden_state_warm_layers": [2],
                                                         "hidden_state_warm_uncertainty": False})
    assert warm_hidden_states(load_config(overrides={"policy.artifact": None})) is None  # priors only: nothing to warm
