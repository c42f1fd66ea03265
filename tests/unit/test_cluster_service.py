"""router/cluster_service.py: Cluster RPC logic over hand-written fakes (the gRPC/Ray path is in
tests/integration/test_cluster_signals.py), and the PoolScaler's membership bookkeeping."""
from __future__ import annotations

import asyncio

import pytest

from thinkroute.v1 import worker_pb2 as pb

from router.cluster_service import ClusterService, ScalingUnavailable, apply_membership, targets_from_config
from router.config import Config
from router.errors import InvalidRoute, NotFound
from router.metrics import RouterSignals
from router.planner import DialStore
from router.replicas import ReplicaSet

CONFIG = Config.model_validate({
    "models": {"a": {"replicas": 0, "addresses": ["h:1", "h:2"]}, "b": {"replicas": 0, "addresses": ["h:3"]}},
    "router": {"default_model": "a", "roles": {"small": "a", "large": "b"}},
    "autoscale": {"pools": {"b": {"capacity_tokens_per_s": 10, "max_replicas": 5, "ttft_p95_ms": 500}},
                  "downscale_delay_s": 0},
})


class FakeClient:
    def __init__(self, address: str) -> None:
        self.address = address

    async def close(self) -> None:
        pass


class FakePool:
    def __init__(self) -> None:
        self.replica_set = ReplicaSet({m: list(p.addresses) for m, p in CONFIG.models.items()}, FakeClient)
        self.replicas = self.replica_set.replicas

    def models(self):
        return self.replica_set.models()

    async def stats(self):
        return [{"model": m, "p50_latency_ms": 100.0, "p95_latency_ms": 200.0} for m in self.models()]


class FakeCore:
    def __init__(self) -> None:
        self.pool = FakePool()
        self.dials = DialStore(0.4)
        self.signals = RouterSignals({"big": {"b": 100}}, dial=lambda: 0.4)


def load(**kw) -> pb.LoadResponse:
    return pb.LoadResponse(max_concurrency=4, **kw)


def test_targets_come_from_the_config():
    t = targets_from_config(CONFIG)
    assert t["b"].capacity_tokens_per_s == 10 and t["b"].max_replicas == 5
    assert t["a"].capacity_tokens_per_s == CONFIG.autoscale.default.capacity_tokens_per_s


def test_stats_aggregate_replica_loads_and_the_plan_mix():
    core = FakeCore()
    a1, a2 = core.pool.replica_set.pool("a")
    a1.load = load(running=2, queued=1, prompt_tokens_per_s=30, generated_tokens_per_s=5, ttft_p95_ms=300,
                   ttft_p50_ms=100, itl_p95_ms=40, prefix_cache_hit_rate=0.5, kv_cache_usage=0.2)
    a2.load = load(running=1, prompt_tokens_per_s=10, generated_tokens_per_s=3, ttft_p95_ms=800, kv_cache_usage=0.4)
    (b1,) = core.pool.replica_set.pool("b")
    b1.load = load(ttft_p95_ms=900)
    for _ in range(4):
        core.signals.planned("big", "direct", {"model": "b"}, 0.4, 0.001)
    service = ClusterService(core, CONFIG)
    stats, decisions, healthy = asyncio.run(service.stats())
    a, b = stats.pools
    assert (a.pool, a.replicas, a.healthy_replicas, a.running, a.waiting) == ("a", 2, 2, 3, 1)
    assert a.kv_cache_usage == pytest.approx(0.3) and a.ttft_p95_ms == 800 and a.itl_p95_ms == 40
    assert a.prompt_tokens_per_s == 40 and a.generated_tokens_per_s == 8
    assert a.prefix_cache_hit_rate == pytest.approx(15 / 40) and a.latency_p95_ms == 200
    assert b.plans_per_s == pytest.approx(4 / 20) and b.demand_tokens_per_s == pytest.approx(20)
    # b: 20 tokens/s over 10 x 0.7 -> 3 replicas; ttft 900 > 500 -> 2; demand decides
    assert decisions["b"].desired == 3 and decisions["b"].reason == "demand" and b.desired_replicas == 3
    assert stats.plan_rate["big"] == pytest.approx(0.2) and stats.dial == pytest.approx(0.4)
    desired = asyncio.run(service.desired(["b"])).pools[0]
    assert (desired.pool, desired.current, desired.desired, desired.capacity_tokens_per_s) == ("b", 1, 3, 10)


def test_unknown_pools_bad_intervals_and_no_scaler_are_clear_errors():
    service = ClusterService(FakeCore(), CONFIG)
    with pytest.raises(NotFound, match="unknown pool 'zz'"):
        asyncio.run(service.stats(["zz"]))

    async def first(interval):
        async for s in service.watch([], interval):
            return s

    with pytest.raises(InvalidRoute, match="interval_s"):
        asyncio.run(first(0.01))
    assert len(asyncio.run(first(0)).pools) == 2
    with pytest.raises(ScalingUnavailable):
        asyncio.run(service.set_replicas("a", 3))


def test_membership_follows_the_scaler_and_keeps_static_replicas():
    pool = FakePool()
    apply_membership(pool, {"pools": {"a": {"ready": ["h:9"]}}})
    assert [(r.address, r.source) for r in pool.replica_set.pool("a")] == [("h:1", "static"), ("h:2", "static"),
                                                                           ("h:9", "scaler")]
    apply_membership(pool, {"pools": {"a": {"ready": []}, "unknown": {"ready": ["x:1"]}}})
    assert [r.address for r in pool.replica_set.pool("a")] == ["h:1", "h:2"]


class FakeWorker:
    def __init__(self, pool: str, index: int) -> None:
        self.model, self.index, self.address = pool, index, f"127.0.0.1:{7000 + index}"
        self.is_ready, self.stopped = False, False
        self.proc = self
        self.log_path = "log"

    def ready(self) -> bool:
        return self.is_ready

    def poll(self):
        return None

    def stop(self, grace_s: float) -> None:
        self.stopped = True


def test_pool_scaler_starts_publishes_when_ready_and_stops_newest_first(tmp_path):
    from router.cluster_service import PoolScaler

    async def scenario():
        scaler = PoolScaler(CONFIG.model_dump(mode="json"), {"a": ["h:1"], "b": ["h:3"]}, str(tmp_path))
        started: list[FakeWorker] = []

        def fake_start(pool):
            w = FakeWorker(pool, scaler._next_index)
            scaler._next_index += 1
            started.append(w)
            return w

        scaler._start = fake_start
        snap = await scaler.set("a", 3)  # 1 static + 2 of its own
        assert snap["pools"]["a"] == {"target": 3, "static": 1, "started": [w.address for w in started], "ready": []}
        assert [w.index for w in started] == [1000, 1001]
        watcher = asyncio.ensure_future(scaler.watch(snap["epoch"], snap["version"], timeout_s=5))
        started[1].is_ready = True
        snap = await watcher  # the long-poll returns when a worker becomes ready
        assert snap["pools"]["a"]["ready"] == [started[1].address]
        snap = await scaler.set("a", 0)  # never below the static floor; stops its own, newest first
        assert snap["pools"]["a"]["target"] == 1 and snap["pools"]["a"]["started"] == []
        assert snap["pools"]["a"]["ready"] == []
        await asyncio.sleep(0.6)
        assert all(w.stopped for w in started)
        with pytest.raises(NotFound):
            await scaler.set("zz", 1)

    asyncio.run(scenario())
