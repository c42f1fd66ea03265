"""ReplicaSet / Picker / scaling: health verdicts, registry membership, reservation before any await,
desired replicas. Hand-written fakes, injected clock; no processes."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from thinkroute.v1 import worker_pb2 as pb

from router.errors import NoReplica
from router.picker import Picker
from router.pool import WorkerPool
from router.replicas import ReplicaSet
from router.scaling import ReplicaLoad, desired_replicas
from router.scorers import LeastLoadScorer, PickRequest
from router.scorers.prefix import PrefixScorerConfig, affinity_scores
from workers.registration import Registration
from workers.types import PromptInput


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}")


class FakeClient:
    """Health answers `status` (1 SERVING, 2 NOT_SERVING), or hangs when `hung`."""

    def __init__(self, address: str, status: int = 1, hung: bool = False, running: int = 0, queued: int = 0,
                 capacity: int = 32) -> None:
        self.address, self.status, self.hung = address, status, hung
        self.running, self.queued, self.capacity = running, queued, capacity
        self.closed = False

    async def health(self, timeout: float = 2.0) -> int:
        if self.hung:
            await asyncio.sleep(timeout)
            raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
        return self.status

    async def load(self, timeout: float = 2.0):
        return pb.LoadResponse(running=self.running, queued=self.queued, max_concurrency=self.capacity)

    async def info(self, timeout: float = 2.0):
        return pb.InfoResponse(model_id="m", replica_id=f"id-{self.address}", max_concurrency=self.capacity)

    async def close(self) -> None:
        self.closed = True


def fake_set(addresses, **kw) -> tuple[ReplicaSet, dict[str, FakeClient]]:
    clients: dict[str, FakeClient] = {}

    def factory(address: str) -> FakeClient:
        clients.setdefault(address, FakeClient(address))
        return clients[address]

    return ReplicaSet(addresses, factory, **kw), clients


# -- health ------------------------------------------------------------------------------------------
async def test_a_hung_replica_leaves_traffic_after_unhealthy_after_probes_and_returns_when_serving():
    rs, clients = fake_set({"m": ["a", "b"]}, health_interval_s=1.0, health_timeout_s=0.05, unhealthy_after=2)
    clients["a"].hung = True
    await rs.probe_all()
    assert {r.address for r in rs.candidates("m")} == {"a", "b"}  # one missed check is not enough
    await rs.probe_all()
    assert [r.address for r in rs.candidates("m")] == ["b"]
    clients["a"].hung = False
    await rs.probe_all()
    assert {r.address for r in rs.candidates("m")} == {"a", "b"}


async def test_not_serving_leaves_traffic_at_once():
    rs, clients = fake_set({"m": ["a", "b"]}, health_interval_s=1.0)
    clients["b"].status = 2
    await rs.probe_all()
    assert [r.address for r in rs.candidates("m")] == ["a"]


async def test_the_pool_never_picks_an_unhealthy_replica():
    pool = WorkerPool({"m": ["a", "b"]}, health_interval_s=60.0)
    for r in pool.replicas["m"]:
        r.client = FakeClient(r.address, status=2 if r.address == "a" else 1)
    await pool.replica_set.probe_all()
    for _ in range(20):
        assert (await pool.pick("m")).address == "b"
    assert pool.has_live_replica("m")
    pool.replicas["m"][1].client.status = 2
    await pool.replica_set.probe_all()
    with pytest.raises(NoReplica, match="'m'"):
        await pool.pick("m")
    assert not pool.has_live_replica("m")


async def test_background_probing_runs_on_the_serving_loop_and_stops_on_close():
    rs, clients = fake_set({"m": ["a"]}, health_interval_s=0.01)
    clients["a"].status = 2
    rs.ensure_running()
    for _ in range(100):
        if not rs.pool("m")[0].healthy:
            break
        await asyncio.sleep(0.01)
    assert not rs.pool("m")[0].healthy
    await rs.close()
    assert rs._tasks == [] and clients["a"].closed


# -- discovery ---------------------------------------------------------------------------------------
class FakeDiscovery:
    poll_interval_s = 0.01

    def __init__(self) -> None:
        self.regs: list[Registration] | None = []

    async def registrations(self):
        return self.regs

    async def close(self) -> None:
        pass


def reg(pool: str, address: str) -> Registration:
    return Registration(pool=pool, model_id=pool, address=address, replica_id=f"r-{address.replace(':', '-')}",
                        capacity=8)


async def test_registrations_join_and_expirations_leave_static_replicas_stay():
    d = FakeDiscovery()
    rs, clients = fake_set({"m": ["static:1"], "n": []}, discovery=d, health_interval_s=1.0)
    d.regs = [reg("m", "w1:1"), reg("n", "w2:1"), reg("unknown", "w3:1")]
    await rs.refresh()
    assert {r.address for r in rs.pool("m")} == {"static:1", "w1:1"}
    assert [r.address for r in rs.candidates("n")] == ["w2:1"]
    assert rs.pool("m")[1].source == "registry" and rs.pool("m")[1].replica_id == "id-w1:1"  # its Info wins
    d.regs = [reg("n", "w2:1")]  # w1's key expired
    await rs.refresh()
    assert [r.address for r in rs.pool("m")] == ["static:1"] and clients["w1:1"].closed
    d.regs = None  # registry unreadable: nobody leaves
    await rs.refresh()
    assert [r.address for r in rs.pool("n")] == ["w2:1"]


async def test_a_registered_worker_that_fails_its_first_health_check_gets_no_traffic():
    d = FakeDiscovery()
    rs, clients = fake_set({"m": []}, discovery=d, health_interval_s=1.0)
    clients["w1:1"] = FakeClient("w1:1", status=2)
    d.regs = [reg("m", "w1:1")]
    await rs.refresh()
    assert rs.pool("m") and rs.candidates("m") == []


async def test_a_leaving_replica_keeps_its_channel_until_its_calls_end():
    d = FakeDiscovery()
    rs, clients = fake_set({"m": []}, discovery=d)
    d.regs = [reg("m", "w1:1")]
    await rs.refresh()
    rs.pool("m")[0].inflight = 1
    d.regs = []
    await rs.refresh()
    assert not clients["w1:1"].closed
    rs._retired[0].inflight = 0
    await rs.refresh()
    assert clients["w1:1"].closed


# -- reservation before any await --------------------------------------------------------------------
class HotPrefixScorer:
    """Like the pool's prefix scorer: an async index read in `prepare` (yields to the loop), then the
    affinity rule on the loads at score time; replica `a` holds the whole prompt warm."""

    name = "prefix"
    needs_prompt_ids = True

    async def prepare(self, request: PickRequest) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        request.extra["prefix_match"] = {"a": 1.0, "b": 0.0}

    def score(self, replicas, request):
        return affinity_scores(replicas, request.extra.get("prefix_match"), request.inflight, PrefixScorerConfig())


async def test_a_burst_for_a_hot_prefix_does_not_herd_onto_the_warm_replica():
    rs, _ = fake_set({"m": ["a", "b"]})

    async def tokenize(model, prompt, deadline):
        await asyncio.sleep(0.001)
        return list(range(64))

    picker = Picker(rs, [(LeastLoadScorer(), 1.0), (HotPrefixScorer(), 2.0)], tokenize=tokenize)
    picks = await asyncio.gather(*(picker.pick("m", prompt=PromptInput(text="hot")) for _ in range(40)))
    counts = {a: sum(p.address == a for p in picks) for a in ("a", "b")}
    # every pick is reserved (held: none of these calls has ended) ...
    assert {r.address: r.inflight for r in rs.pool("m")} == counts
    # ... so affinity keeps `a` ahead but the imbalance rule spreads the burst (before: all 40 on `a`)
    assert counts["b"] >= 10 and counts["a"] - counts["b"] <= PrefixScorerConfig().balance_abs_threshold + 1, counts


async def test_a_burst_with_load_only_picking_splits_evenly():
    rs, _ = fake_set({"m": ["a", "b", "c", "d"]})
    picker = Picker(rs, [(LeastLoadScorer(), 1.0)])
    await asyncio.gather(*(picker.pick("m") for _ in range(40)))
    assert sorted(r.inflight for r in rs.pool("m")) == [10, 10, 10, 10]


async def test_the_caller_releases_the_reservation_when_the_call_ends():
    pool = WorkerPool({"m": ["a", "b"]})

    async def ok(replica, timeout, attempt):
        assert replica.inflight == 1
        return replica.address

    await asyncio.gather(*(pool.caller.call("m", "test", time.monotonic() + 5, ok) for _ in range(10)))
    assert [r.inflight for r in pool.replicas["m"]] == [0, 0]


# -- desired replicas --------------------------------------------------------------------------------
def test_two_of_four_healthy_at_half_load_do_not_ask_for_three():
    healthy = [ReplicaLoad(running=16, queued=0, max_concurrency=32)] * 2
    assert desired_replicas(healthy, configured=4, target_utilisation=0.7) == 2  # the old formula said 3
    assert desired_replicas(healthy, configured=4, target_utilisation=0.5) == 2  # exactly 1 replica's worth / 0.5


@pytest.mark.parametrize("loads, configured, target, want", [
    ([], 3, 0.7, 3),                                       # nothing healthy: demand unknown, keep
    ([ReplicaLoad(0, 0, 32)], 1, 0.7, 1),                  # idle: at least 1
    ([ReplicaLoad(32, 32, 32)] * 2, 2, 0.7, 6),            # 4 replicas' worth of work / 0.7 = 5.7 -> 6
    ([ReplicaLoad(32, 0, 32)] * 4, 4, 1.0, 4),             # exactly full at target 1: no extra replica
])
def test_desired_replicas_table(loads, configured, target, want):
    assert desired_replicas(loads, configured, target) == want


def test_desired_replicas_rejects_a_bad_target():
    with pytest.raises(ValueError, match="target_utilisation"):
        desired_replicas([], 1, 0.0)


async def test_pool_stats_count_only_healthy_replicas_and_use_the_fixed_formula():
    pool = WorkerPool({"m": ["a", "b", "c", "d"]}, health_interval_s=60.0)
    for r in pool.replicas["m"]:
        r.client = FakeClient(r.address, status=1 if r.address in "ab" else 2, running=16, capacity=32)
    await pool.replica_set.probe_all()
    pool.replica_set.ensure_running = lambda: None  # stats read the last probe round
    [s] = await pool.stats(target_utilisation=0.7)
    assert (s["replicas"], s["healthy_replicas"], s["running"], s["desired_replicas"]) == (4, 2, 32, 2)


async def test_a_worker_restarted_on_the_same_address_is_described_again():
    d = FakeDiscovery()
    rs, clients = fake_set({"m": []}, discovery=d, health_interval_s=1.0)
    d.regs = [reg("m", "w1:1")]
    await rs.refresh()
    r = rs.pool("m")[0]
    assert r.info is not None
    await rs.refresh()
    assert r.info is not None  # same process: Info kept
    d.regs = [Registration(pool="m", model_id="m", address="w1:1", replica_id="new-process")]
    await rs.refresh()
    assert r.info is None and r.replica_id == "new-process"
