"""router/ray_autoscaling.py: Ray Serve's AutoscalingContext -> router/autoscale.py's coupled decision.

The contexts are Ray's own `AutoscalingContext` objects, and the policies are resolved and wrapped the way the
Serve controller does it (ray.serve.config.AutoscalingPolicy -> cloudpickle by value -> class instantiated
with policy_kwargs -> Ray's delay / scaling-factor wrapper), so these tests exercise the hook Ray calls.
"""
from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.autoscaling_state import _resolve_policy_callable  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.autoscaling_policy import _apply_autoscaling_config, replica_queue_length_autoscaling_policy  # noqa: E402
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy  # noqa: E402

from router import ray_autoscaling as ra  # noqa: E402
from router.autoscale import PlanMix  # noqa: E402

AUTOSCALE = {"downscale_delay_s": 30.0,
             "default": {"capacity_tokens_per_s": 60.0, "target_utilisation": 0.7, "max_replicas": 6},
             "pools": {"large": {"capacity_tokens_per_s": 60.0, "target_utilisation": 0.7, "max_replicas": 6,
                                 "ttft_p95_ms": 2000.0, "kv_cache_usage_target": 0.8}}}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def ctx(name: str, replicas: int, metrics: dict[str, list[float]] | None = None, *, target: int | None = None,
        total: float = 0.0, queued: float = 0.0, lo: int = 1, hi: int = 6, t: float = 0.0,
        app: str = "thinkroute", state: dict | None = None, config: AutoscalingConfig | None = None):
    """Ray's AutoscalingContext for deployment `name` with `replicas` running and per-replica metric values."""
    dep = DeploymentID(name=name, app_name=app)
    rids = [ReplicaID(unique_id=f"{name}-{i}", deployment_id=dep) for i in range(replicas)]
    agg = {k: {rids[i]: v for i, v in enumerate(vals)} for k, vals in (metrics or {}).items()}
    return AutoscalingContext(
        deployment_id=dep, deployment_name=name, app_name=app, current_num_replicas=replicas,
        target_num_replicas=replicas if target is None else target, running_replicas=rids,
        total_num_requests=total, total_queued_requests=queued, aggregated_metrics=lambda: agg, raw_metrics=None,
        capacity_adjusted_min_replicas=lo, capacity_adjusted_max_replicas=hi, policy_state=state or {},
        last_scale_up_time=None, last_scale_down_time=None, current_time=t,
        config=config or AutoscalingConfig(min_replicas=lo, max_replicas=hi, upscale_delay_s=0, downscale_delay_s=0))


def as_ray_runs_it(function: str, kwargs: dict):
    """The policy as the Serve controller builds it: serialised, resolved (class -> instance), wrapped."""
    policy = AutoscalingPolicy(policy_function=function, policy_kwargs=kwargs)
    return _apply_autoscaling_config(_resolve_policy_callable(policy))


def test_load_stats_turn_a_worker_load_report_into_ray_metrics():
    from thinkroute.v1 import worker_pb2 as wpb

    stats = ra.load_stats(wpb.LoadResponse(running=3, queued=2, max_concurrency=8, ttft_p95_ms=450.0,
                                           generated_tokens_per_s=70.0, kv_cache_usage=0.4))
    assert stats == {ra.RUNNING: 3.0, ra.WAITING: 2.0, ra.MAX_CONCURRENCY: 8.0, ra.TTFT_P95_MS: 450.0,
                     ra.GENERATED_TOKENS_PER_S: 70.0, ra.KV_CACHE_USAGE: 0.4}
    assert all(isinstance(v, float) for v in stats.values())  # Ray refuses anything but int / float
    assert ra.KV_CACHE_USAGE not in ra.load_stats(wpb.LoadResponse(running=1))  # hf engine: not reported


def test_observation_reads_pushed_metrics_and_falls_back_to_rays_counts():
    c = ctx("large", 2, {ra.RUNNING: [4, 6], ra.WAITING: [1, 3], ra.MAX_CONCURRENCY: [8, 8],
                         ra.KV_CACHE_USAGE: [0.5, 0.7], ra.TTFT_P95_MS: [900.0, 2500.0]}, queued=2)
    obs = ra.observation(c)
    assert (obs.replicas, obs.running, obs.waiting, obs.max_concurrency) == (2, 10, 6, 8)  # + 2 held at handles
    assert obs.kv_cache_usage == pytest.approx(0.6) and obs.ttft_p95_ms == 2500.0 and obs.demand_tokens_per_s == 0
    assert ra.observation(ctx("large", 2, {ra.DEMAND: [84.0, 86.0]})).demand_tokens_per_s == 85.0  # pool-wide, not summed
    plain = ra.observation(ctx("large", 2, total=9, queued=4))  # a deployment that pushes nothing of its own
    assert (plain.running, plain.waiting, plain.max_concurrency) == (5, 4, ra.DEFAULT_MAX_CONCURRENCY)


def test_pool_policy_scales_up_on_a_dial_change_before_any_queue_grows():
    """The dial moves reasoner plans from 10 % to 80 %: demand jumps while the pool's queue is still empty;
    the policy asks for replicas in that tick; Ray's default (ongoing requests) keeps 1."""
    policy = as_ray_runs_it(ra.POOL_POLICY, {"pool": "large", "autoscale": AUTOSCALE})
    clock = Clock()
    mix = PlanMix({"drafter": {"small": 128}, "reasoner": {"large": 128}}, window_s=10, clock=clock)
    for i in range(20):  # low dial: 1 plan/s, one in ten calls the reasoner
        clock.t = i * 0.5
        mix.observe_plan("reasoner" if i % 10 == 0 else "drafter", ["large" if i % 10 == 0 else "small"])

    def tick(t: float) -> tuple[int, dict]:
        demand = mix.demand().get("large", 0.0)  # what the pool's replicas push as DEMAND
        c = ctx("large", 1, {ra.RUNNING: [0], ra.WAITING: [0], ra.DEMAND: [demand]}, t=t,
                app="thinkroute-pool-large")
        return policy(c)

    assert tick(10)[0] == 1
    for i in range(20):  # high dial
        clock.t = 10 + i * 0.5
        mix.observe_plan("reasoner" if i % 5 else "drafter", ["large" if i % 5 else "small"])
    n, state = tick(20)
    assert n == 5 and state["thinkroute"]["reason"] == "demand"  # 1.6 plans/s x 128 / (60 x 0.7) -> 5
    assert state["thinkroute"]["by_signal"]["queue"] == 0
    assert replica_queue_length_autoscaling_policy(ctx("large", 1, total=0.0))[0] == 0  # Ray's default: no load


def test_pool_policy_holds_scale_down_within_its_delay_then_shrinks():
    policy = as_ray_runs_it(ra.POOL_POLICY, {"autoscale": AUTOSCALE})  # pool from the app name
    busy = {ra.RUNNING: [40, 40], ra.MAX_CONCURRENCY: [32, 32]}  # 80 / (32 x 0.7) -> 4
    assert policy(ctx("w", 2, busy, t=0, app="thinkroute-pool-large"))[0] == 4
    idle = {ra.RUNNING: [0] * 4, ra.MAX_CONCURRENCY: [32] * 4}
    n, state = policy(ctx("w", 4, idle, t=10, app="thinkroute-pool-large"))
    assert n == 4 and "held" in state["thinkroute"]["reason"] and state["thinkroute"]["pool"] == "large"
    assert policy(ctx("w", 4, idle, t=31, app="thinkroute-pool-large"))[0] == 1


@pytest.mark.parametrize("metrics, lo, hi, want, reason", [
    ({ra.DEMAND: [10_000.0]}, 1, 3, 3, "max_replicas"),                     # Ray's (capacity-adjusted) max
    ({ra.DEMAND: [0.0]}, 2, 6, 2, "min_replicas"),                          # and min
    ({ra.KV_CACHE_USAGE: [0.95, 0.95]}, 1, 6, 3, "kv_cache"),               # 2 x 0.95 / 0.8
    ({ra.TTFT_P95_MS: [1000.0, 3000.0]}, 1, 6, 3, "ttft_p95"),              # over 2000 ms by 1.5
])
def test_pool_policy_signals_and_bounds(metrics, lo, hi, want, reason):
    policy = ra.PoolPolicy(pool="large", autoscale=AUTOSCALE)
    n, state = policy(ctx("large", 2, metrics, lo=lo, hi=hi))
    assert (n, state["thinkroute"]["reason"]) == (want, reason)
    # through Ray's wrapper the same number comes back (delays 0, scaling factor 1), and Ray's bounds hold
    wrapped = as_ray_runs_it(ra.POOL_POLICY, {"pool": "large", "autoscale": AUTOSCALE})
    assert wrapped(ctx("large", 2, metrics, lo=lo, hi=hi))[0] == want


def test_pool_autoscaling_config_is_a_valid_ray_config_whose_policy_resolves():
    cfg = ra.pool_autoscaling_config("large", AUTOSCALE)
    ray_cfg = AutoscalingConfig(**cfg)
    assert (ray_cfg.min_replicas, ray_cfg.max_replicas, ray_cfg.upscale_delay_s) == (1, 6, 0.0)
    policy = _resolve_policy_callable(ray_cfg.policy)
    assert isinstance(policy, ra.PoolPolicy) and policy.pool == "large"
    from router.config import AutoscaleConfig

    assert ra.pool_autoscaling_config("large", AutoscaleConfig.model_validate(AUTOSCALE)) == cfg


def test_pool_name_from_the_application_or_the_deployment():
    assert ra.pool_name("thinkroute-pool-drafter", "worker") == "drafter"
    assert ra.pool_name("thinkroute", "reasoner") == "reasoner"
    assert ra.pool_name("thinkroute-pool-", "x") == "x"


def test_demand_board_sums_fresh_reports_of_router_replicas(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(ra.time, "monotonic", clock)
    board = ra.DemandBoard()
    board.report("r1", {"large": 50.0, "small": 10.0}, ttl_s=6)
    board.report("r2", {"large": 30.0}, ttl_s=6)
    assert board.demand() == {"large": 80.0, "small": 10.0}
    clock.t = 5
    board.report("r2", {"large": 40.0}, ttl_s=6)  # a newer report replaces the replica's last one
    assert board.demand() == {"large": 90.0, "small": 10.0}
    clock.t = 7  # r1 stopped reporting (scaled away): its numbers leave the sum
    assert board.demand() == {"large": 40.0}


def test_no_publisher_without_an_autoscaled_ray_hosted_pool_and_no_board_outside_ray():
    import asyncio

    from types import SimpleNamespace as NS

    cfg = NS(models={"small": NS(hosting="local"), "large": NS(hosting="ray", ray=NS(autoscaling=False))})
    assert ra.autoscaled_pools(cfg) == []
    on = NS(models={**cfg.models, "xl": NS(hosting="ray", ray=NS(autoscaling=True))})
    assert ra.autoscaled_pools(on) == ["xl"]
    assert ra.start_demand_publisher(PlanMix(), cfg) is None
    assert asyncio.run(ra.read_demand("small")) is None  # Ray not started here: no board, no demand


def test_pool_stats_add_the_boards_demand(monkeypatch):
    import asyncio

    from thinkroute.v1 import worker_pb2 as wpb

    async def board_says(pool: str, timeout_s: float = 2.0):
        return {"large": 84.0}.get(pool, 0.0)

    monkeypatch.setattr(ra, "read_demand", board_says)
    stats = asyncio.run(ra.pool_stats("large", wpb.LoadResponse(running=1, max_concurrency=4)))
    assert stats[ra.DEMAND] == 84.0 and stats[ra.RUNNING] == 1.0
    policy = ra.PoolPolicy(pool="large", autoscale=AUTOSCALE)
    assert policy(ctx("worker", 1, {k: [v] for k, v in stats.items()}, app="thinkroute-pool-large"))[0] == 2  # 84 / 42


def test_the_publisher_reports_every_pools_demand_to_the_board(monkeypatch):
    import asyncio
    from types import SimpleNamespace as NS

    board = ra.DemandBoard()

    async def remote(*args):
        board.report(*args)

    handle = NS(report=NS(remote=remote))
    monkeypatch.setattr(ra, "_board", lambda create: handle)
    mix = PlanMix({"reasoner": {"large": 100}}, window_s=10)
    for _ in range(5):
        mix.observe_plan("reasoner", ["large"])
    cfg = NS(models={"small": NS(hosting="local"), "large": NS(hosting="ray", ray=NS(autoscaling=True))})

    async def run():
        task = ra.start_demand_publisher(mix, cfg, "router-1", interval_s=0.01)
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert board.demand() == {"small": 0.0, "large": 50.0}
