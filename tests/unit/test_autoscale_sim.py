"""ops/sim/autoscale.py: the simulator's accounting and its policies on short traces."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sim_autoscale", Path(__file__).resolve().parents[2] / "ops/sim/autoscale.py")
sim = importlib.util.module_from_spec(_spec)
sys.modules["sim_autoscale"] = sim  # dataclasses look their module up while the file executes
_spec.loader.exec_module(sim)

MODELS = {"drafter": sim.PoolModel(cold_start_s=10, single_tps=20, batched_tps=100, ttft_s=0.2),
          "reasoner": sim.PoolModel(cold_start_s=20, single_tps=10, batched_tps=50, ttft_s=0.4)}


def run(policy, arrivals, dial=lambda t: 0.2, duration=120.0, initial=None):
    s = sim.Sim(MODELS, policy, arrivals, dial, dt=0.25, interval=5.0, max_concurrency=32, max_queue=64,
                slo_factor=2.0, initial=initial or {"drafter": 1, "reasoner": 1}, seed=1)
    return s, s.run(duration)


def test_static_counts_replica_seconds_and_meets_the_slo_when_idle():
    _, r = run(sim.Static("s", {"drafter": 2, "reasoner": 1}), [1.0, 30.0, 60.0], initial={"drafter": 2, "reasoner": 1})
    assert r["requests"] == 3 and r["slo_attainment"] == 1.0 and r["shed"] == 0
    assert r["replica_seconds"] == {"drafter": pytest.approx(240), "reasoner": pytest.approx(120)}


def test_plan_mix_follows_the_dial():
    assert sim.plan_mix(0.0)["drafter"] == 1.0
    mix = sim.plan_mix(0.8)
    assert sum(mix.values()) == pytest.approx(1.0) and mix["drafter"] == pytest.approx(0.2)


def test_traces_are_seeded_and_shaped():
    a = sim.make_trace("bursty", 600, 1.0, seed=3)
    assert a == sim.make_trace("bursty", 600, 1.0, seed=3)
    in_burst = sum(1 for t in a if 300 <= t < 360)
    calm = sum(1 for t in a if 200 <= t < 260)
    assert in_burst > 2 * calm


def test_coupled_adds_reasoner_replicas_after_a_dial_change_and_ray_default_waits_its_delay():
    arrivals = [i * 0.5 for i in range(480)]  # 2 req/s for 240 s
    dial = lambda t: 0.0 if t < 60 else 1.0  # noqa: E731 - all drafter, then mostly reasoner plans
    targets = {p: sim.PoolTarget(capacity_tokens_per_s=MODELS[p].batched_tps, max_replicas=8) for p in sim.POOLS}
    s, _ = run(sim.Coupled(targets), arrivals, dial, duration=240)
    reasoners = {t: r for t, _, r in s.timeline}
    assert reasoners[55.0] == 1 and max(reasoners[t] for t in reasoners if 60 <= t <= 70) > 1
    ray, _ = run(sim.RayDefault("ray", 2.0, bounds=(1, 8)), arrivals, dial, duration=240)
    ray_reasoners = {t: r for t, _, r in ray.timeline}
    assert max(ray_reasoners[t] for t in ray_reasoners if 60 <= t <= 85) == 1  # upscale_delay_s = 30
