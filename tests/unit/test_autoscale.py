"""router/autoscale.py: coupled scaling from the plan mix, queue and SLO signals (injected clock, table-driven)."""
from __future__ import annotations

import pytest

from router.autoscale import Autoscaler, PlanMix, PoolObservation, PoolTarget, desired_replicas


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


T = PoolTarget(capacity_tokens_per_s=100.0, ttft_p95_ms=1000.0, latency_p95_ms=8000.0, min_replicas=1,
               max_replicas=6, target_utilisation=0.5)


@pytest.mark.parametrize("obs, desired, reason", [
    (PoolObservation(replicas=1), 1, "min_replicas"),
    (PoolObservation(replicas=1, demand_tokens_per_s=120.0), 3, "demand"),           # 120 / (100 x 0.5) -> 3
    (PoolObservation(replicas=1, demand_tokens_per_s=100.0), 2, "demand"),           # exactly 2, not 3
    (PoolObservation(replicas=2, running=32, waiting=16, max_concurrency=32), 3, "queue"),  # 48 / 16
    (PoolObservation(replicas=2, ttft_p95_ms=1500.0), 3, "ttft_p95"),                 # 2 x 1.5
    (PoolObservation(replicas=2, ttft_p95_ms=9000.0), 4, "ttft_p95"),                 # ratio capped at 2
    (PoolObservation(replicas=3, latency_p95_ms=8100.0), 4, "latency_p95"),           # at least one more
    (PoolObservation(replicas=1, demand_tokens_per_s=10_000.0), 6, "max_replicas"),
])
def test_desired_is_the_largest_ask_within_bounds(obs, desired, reason):
    d = desired_replicas(obs, T)
    assert (d.desired, d.reason) == (desired, reason)


def test_targets_are_validated():
    with pytest.raises(ValueError, match="capacity_tokens_per_s"):
        PoolTarget(capacity_tokens_per_s=0)
    with pytest.raises(ValueError, match="target_utilisation"):
        PoolTarget(capacity_tokens_per_s=1, target_utilisation=1.5)
    with pytest.raises(ValueError, match="min_replicas"):
        PoolTarget(capacity_tokens_per_s=1, min_replicas=3, max_replicas=2)


def test_plan_mix_predicts_demand_per_pool_from_priors_then_usage():
    clock = Clock()
    mix = PlanMix({"drafter": {"small": 100}, "specreason": {"small": 100, "large": 40}}, window_s=10, clock=clock)
    for _ in range(10):
        mix.observe_plan("drafter", ["small"])
    for _ in range(5):
        mix.observe_plan("specreason", ["small", "large"])
    assert mix.plan_rate() == {"drafter": 1.0, "specreason": 0.5}
    assert mix.demand() == {"small": 150.0, "large": 20.0}
    assert mix.pool_plan_rate() == {"small": 1.5, "large": 0.5}
    mix.observe_usage("specreason", {"small": 100, "large": 140})  # the reasoner wrote more than the prior said
    assert mix.tokens_of("specreason", "large") == pytest.approx(60.0)  # 0.8 x 40 + 0.2 x 140
    clock.t = 10.5  # the window forgets
    assert mix.demand() == {}


def test_unknown_plan_uses_default_tokens_until_seen():
    mix = PlanMix(window_s=1, default_tokens=64, clock=Clock())
    mix.observe_plan("direct:x", ["x"])
    assert mix.demand() == {"x": 64.0}
    mix.observe_usage("direct:x", {"x": 10})
    assert mix.demand() == {"x": 10.0}


def test_a_dial_change_moves_demand_before_any_queue_grows():
    """Coupled scaling's point: with queues still empty, more reasoner plans ask for more reasoner replicas."""
    clock = Clock()
    mix = PlanMix({"drafter": {"small": 128}, "reasoner": {"large": 128}}, window_s=10, clock=clock)
    target = PoolTarget(capacity_tokens_per_s=60.0, target_utilisation=0.7, max_replicas=10)

    def ask(pool: str) -> int:
        obs = PoolObservation(replicas=1, demand_tokens_per_s=mix.demand().get(pool, 0.0))  # no queue at all
        return desired_replicas(obs, target).desired

    for i in range(20):  # dial low: 1 req/s, 10 % reasoner plans
        clock.t = i * 0.5
        mix.observe_plan("reasoner" if i % 10 == 0 else "drafter", ["large" if i % 10 == 0 else "small"])
    low = ask("large")
    for i in range(20):  # dial high: 80 % reasoner plans
        clock.t = 10 + i * 0.5
        mix.observe_plan("reasoner" if i % 5 else "drafter", ["large" if i % 5 else "small"])
    assert low == 1 and ask("large") == 5  # 1.6 plans/s x 128 tokens / (60 x 0.7) -> 4.9 -> 5
    assert ask("small") == 2  # 0.4 x 128 / 42 -> 1.2 -> 2


def test_autoscaler_scales_up_at_once_and_down_after_the_delay():
    scaler = Autoscaler({"p": T}, downscale_delay_s=30)
    up = scaler.step(0, {"p": PoolObservation(replicas=1, demand_tokens_per_s=200)}, {"p": 1})
    assert up["p"].desired == 4
    held = scaler.step(10, {"p": PoolObservation(replicas=4, demand_tokens_per_s=0)}, {"p": 4})
    assert held["p"].desired == 4 and "held" in held["p"].reason
    down = scaler.step(31, {"p": PoolObservation(replicas=4, demand_tokens_per_s=0)}, {"p": 4})
    assert down["p"].desired == 1


def test_kv_cache_usage_asks_for_replicas_only_with_a_target():
    kv = PoolTarget(capacity_tokens_per_s=100.0, max_replicas=6, kv_cache_usage_target=0.6)
    busy = PoolObservation(replicas=2, kv_cache_usage=0.9)
    assert desired_replicas(busy, T).reason == "min_replicas"          # no KV target: KV usage is not a signal
    d = desired_replicas(busy, kv)
    assert (d.desired, d.reason) == (3, "kv_cache")                    # 2 x 0.9 / 0.6
    assert "kv_cache" not in desired_replicas(PoolObservation(replicas=2, kv_cache_usage=0.5), kv).by_signal
    with pytest.raises(ValueError, match="kv_cache_usage_target"):
        PoolTarget(capacity_tokens_per_s=1, kv_cache_usage_target=1.5)


def test_pool_targets_read_the_config_section_per_pool():
    from router.autoscale import pool_targets
    from router.config import AutoscaleConfig

    auto = AutoscaleConfig.model_validate({"default": {"capacity_tokens_per_s": 50},
                                           "pools": {"large": {"capacity_tokens_per_s": 20, "max_replicas": 2,
                                                               "kv_cache_usage_target": 0.8}}})
    t = pool_targets(auto, ["small", "large"])
    assert t["small"].capacity_tokens_per_s == 50 and t["small"].kv_cache_usage_target == 0
    assert (t["large"].capacity_tokens_per_s, t["large"].max_replicas, t["large"].kv_cache_usage_target) == (20, 2, 0.8)
