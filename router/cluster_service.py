"""thinkroute.v1.Cluster: pool signals, desired replicas and scaling, for a cluster autoscaler.

    autoscaler --gRPC--> Ray Serve gRPC proxy --> RouterIngress.GetPoolStats / WatchPoolStats /
                                                  GetDesiredReplicas / SetReplicas   (router/serve_app.py)
                                              --> ClusterService (this module), one per router replica
    SetReplicas --> PoolScaler (one Serve replica per application) starts / stops `thinkroute worker`
                    processes --> every router replica follows its versioned membership (long-poll) and
                    adds / removes those workers in its ReplicaSet.

Signals per pool come from the router replica's ReplicaSet (each worker's `Load`: running, waiting, KV-cache
usage, tokens/s, TTFT/ITL p50/p95, prefix-cache hit rate; see workers/metrics.py), its own call latencies,
and its plan mix (router/metrics.py: plans per second and the token demand they predict per pool).
`desired_replicas` is router/autoscale.py's coupled decision on those signals against `autoscale:` targets.

What `SetReplicas` can scale (stated in its `how`): the pool's workers that the PoolScaler starts itself,
as local `thinkroute worker` processes on the host of the PoolScaler replica (the head node of a local
Ray; on a Ray cluster, whichever node Serve placed it on). Workers it did not start (config
`addresses`, the launcher's, discovered ones) are the pool's floor: it neither stops nor counts them
as its own. A pool with `hosting: ray` is a Ray Serve deployment instead (router/ray_pools.py): SetReplicas
sets that deployment's replica count (Serve places the replicas by resources; their workers join through the
registry), unless a Serve autoscaling policy owns the count (FAILED_PRECONDITION).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from thinkroute.v1 import cluster_pb2 as cpb

from router.autoscale import Autoscaler, Decision, PoolObservation, PoolTarget, pool_targets
from router.errors import InvalidRoute, NotFound, RoutingError

log = logging.getLogger("thinkroute.cluster")

CLUSTER_SERVICER = "thinkroute.v1.cluster_pb2_grpc.add_ClusterServicer_to_server"
WATCH_DEFAULT_S, WATCH_MIN_S, WATCH_MAX_S = 5.0, 0.2, 3600.0
#: How long one long-poll of the scaler's membership waits for a change before it is renewed.
SCALER_WATCH_S = 30.0
SCALER_SOURCE = "scaler"
REPO = Path(__file__).resolve().parents[1]


class ScalingUnavailable(RoutingError):
    """This deployment cannot do what SetReplicas asked (no scaler, or a pool it cannot scale)."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 409


def targets_from_config(config) -> dict[str, PoolTarget]:
    """`autoscale.pools.<pool>` (or `autoscale.default`) for every model pool."""
    return pool_targets(config.autoscale, config.models)


class ClusterService:
    """The Cluster RPCs over one router replica's core (its pool, signals and dials)."""

    def __init__(self, core, config, scaler=None) -> None:
        self.core, self.config, self.scaler = core, config, scaler
        self.targets = targets_from_config(config)
        self.autoscaler = Autoscaler(self.targets, config.autoscale.downscale_delay_s)
        self._scaler_targets: dict[str, int] = {}

    def _pools(self, names) -> list[str]:
        known = self.core.pool.models()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NotFound(f"unknown pool {unknown[0]!r}; this router serves {known}")
        return list(names) or known

    def _members(self, pool: str) -> list:
        rs = getattr(self.core.pool, "replica_set", None)
        return rs.pool(pool) if rs is not None else self.core.pool.replicas[pool]

    async def stats(self, names=()) -> tuple[cpb.ClusterStats, dict[str, Decision], dict[str, int]]:
        """Signals of the named pools (all when empty), the autoscaler's decision for each, healthy counts."""
        pools = self._pools(names)
        base = {s["model"]: s for s in await self.core.pool.stats()}  # refreshes every replica's Load report
        mix = self.core.signals.mix
        demand, pool_rate = mix.demand(), mix.pool_plan_rate()
        signals, observations, healthy = {}, {}, {}
        for pool in pools:
            members = self._members(pool)
            live = [r for r in members if getattr(r, "healthy", True) and getattr(r, "load", None) is not None]
            loads = [r.load for r in live]
            kv = [l.kv_cache_usage for l in loads if l.HasField("kv_cache_usage")]
            b = base.get(pool, {})
            sig = cpb.PoolSignals(
                pool=pool, replicas=len(members), healthy_replicas=len(live),
                running=sum(l.running for l in loads), waiting=sum(l.queued for l in loads),
                kv_cache_usage=sum(kv) / len(kv) if kv else 0.0,
                prompt_tokens_per_s=sum(l.prompt_tokens_per_s for l in loads),
                generated_tokens_per_s=sum(l.generated_tokens_per_s for l in loads),
                ttft_p50_ms=max((l.ttft_p50_ms for l in loads), default=0.0),
                ttft_p95_ms=max((l.ttft_p95_ms for l in loads), default=0.0),
                itl_p50_ms=max((l.itl_p50_ms for l in loads), default=0.0),
                itl_p95_ms=max((l.itl_p95_ms for l in loads), default=0.0),
                latency_p50_ms=b.get("p50_latency_ms", 0.0), latency_p95_ms=b.get("p95_latency_ms", 0.0),
                prefix_cache_hit_rate=_weighted_hit_rate(loads),
                plans_per_s=pool_rate.get(pool, 0.0), demand_tokens_per_s=demand.get(pool, 0.0),
                target_replicas=self._scaler_targets.get(pool, 0),
            )
            signals[pool] = sig
            healthy[pool] = len(live)
            per_replica = (sum(max(1, l.max_concurrency) for l in loads) / len(loads)) if loads else 32
            observations[pool] = PoolObservation(
                replicas=len(live), running=sig.running, waiting=sig.waiting, max_concurrency=int(per_replica),
                ttft_p95_ms=sig.ttft_p95_ms, latency_p95_ms=sig.latency_p95_ms,
                demand_tokens_per_s=sig.demand_tokens_per_s, kv_cache_usage=sig.kv_cache_usage)
        decisions = self.autoscaler.step(time.monotonic(), observations, healthy)
        for pool, d in decisions.items():
            signals[pool].desired_replicas = d.desired
        out = cpb.ClusterStats(pools=[signals[p] for p in pools], plan_rate=mix.plan_rate(),
                               dial=self.core.dials.get(""), timestamp=time.time())
        return out, decisions, healthy

    async def desired(self, names=()) -> cpb.DesiredReplicasResponse:
        _, decisions, healthy = await self.stats(names)
        mix_demand = self.core.signals.mix.demand()
        return cpb.DesiredReplicasResponse(pools=[
            cpb.DesiredReplicas(pool=p, current=healthy[p], desired=d.desired, reason=d.reason,
                                demand_tokens_per_s=mix_demand.get(p, 0.0),
                                capacity_tokens_per_s=self.targets[p].capacity_tokens_per_s)
            for p, d in decisions.items()])

    async def watch(self, names, interval_s: float) -> AsyncIterator[cpb.ClusterStats]:
        """ClusterStats every `interval_s` (0 = WATCH_DEFAULT_S) until the caller stops iterating."""
        interval = interval_s or WATCH_DEFAULT_S
        if not WATCH_MIN_S <= interval <= WATCH_MAX_S:
            raise InvalidRoute(f"interval_s must be in [{WATCH_MIN_S}, {WATCH_MAX_S}] seconds (0 = {WATCH_DEFAULT_S}); "
                               f"got {interval_s}")
        self._pools(names)
        while True:
            t0 = time.monotonic()
            stats, _, _ = await self.stats(names)
            yield stats
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    async def set_replicas(self, pool: str, replicas: int) -> cpb.SetReplicasResponse:
        self._pools([pool])
        if self.scaler is None:
            raise ScalingUnavailable("this router has no worker scaler (it runs outside its Ray Serve application)")
        top = self.targets[pool].max_replicas
        if not 0 <= replicas <= top:
            raise InvalidRoute(f"replicas must be in [0, {top}] for pool {pool!r} (autoscale max_replicas); got {replicas}")
        snap = await self.scaler.set.remote(pool, replicas)
        self.apply(snap)
        p = snap["pools"][pool]
        return cpb.SetReplicasResponse(pool=pool, target=p["target"], static_replicas=p["static"],
                                       started=p["started"], how=snap["how"])

    # -- following the scaler's membership --------------------------------------------------------
    def apply(self, snap: dict[str, Any]) -> None:
        """Make this replica's pool match the scaler's started-and-ready workers (join new, drop stopped)."""
        apply_membership(self.core.pool, snap)
        for pool, p in snap.get("pools", {}).items():
            self._scaler_targets[pool] = p["target"]
        self._version = (snap.get("epoch"), snap.get("version"))

    async def follow(self) -> None:
        """Long-poll the PoolScaler for as long as this replica lives (started by RouterIngress)."""
        self.apply(await self.scaler.get.remote())
        while True:
            try:
                epoch, version = getattr(self, "_version", (None, -1))
                self.apply(await self.scaler.watch.remote(epoch, version))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the last membership, try again
                log.warning("could not read the worker scaler's state; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1.0)


def _weighted_hit_rate(loads) -> float:
    prompt = sum(l.prompt_tokens_per_s for l in loads)
    return sum(l.prefix_cache_hit_rate * l.prompt_tokens_per_s for l in loads) / prompt if prompt else 0.0


def apply_membership(pool, snap: dict[str, Any]) -> None:
    """Add the scaler's ready workers missing from `pool` and remove its workers no longer listed."""
    rs = pool.replica_set
    for name, p in snap.get("pools", {}).items():
        if name not in rs.replicas:
            continue
        want = set(p["ready"])
        for r in list(rs.pool(name)):
            if r.source == SCALER_SOURCE and r.address not in want:
                rs.remove(r, "stopped by the scaler")
        have = {r.address for r in rs.pool(name)}
        for address in sorted(want - have):
            rs.add(name, address, source=SCALER_SOURCE)


class PoolScaler:
    """Starts and stops `thinkroute worker` processes per pool (a one-replica Serve deployment of the app).

    State is versioned like the dial state: router replicas long-poll `watch` and follow. A worker joins
    `ready` once it serves (its ready file exists); scaling down removes a worker from `ready` first (routers
    stop picking it), then drains it with SIGTERM. The workers die with this replica's process.
    """

    def __init__(self, config: dict[str, Any], static: dict[str, list[str]], run_dir: str) -> None:
        from router.config import Config

        self.config = Config.model_validate(config)
        self.static = {p: list(a) for p, a in static.items()}
        self.run_dir = Path(run_dir)
        self.epoch, self.version = uuid.uuid4().hex, 0
        self.workers: dict[str, list] = {p: [] for p in self.config.models}
        self.ready: dict[str, list[str]] = {p: [] for p in self.config.models}
        self.targets: dict[str, int] = {p: c.replicas for p, c in self.config.models.items() if c.hosting == "ray"}
        self._changed = asyncio.Event()
        #: Indexes of scaler-started workers (replica ids `<pool>-<index>`) start far above the launcher's own.
        self._next_index = 1000
        self._tasks: set[asyncio.Task] = set()

    def snapshot(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": self.version, "how": "local worker processes",
                "pools": {p: {"target": self.targets.get(p, len(self.static.get(p, [])) + len(self.workers[p])),
                              "static": len(self.static.get(p, [])),
                              "started": [w.address for w in self.workers[p]], "ready": list(self.ready[p])}
                          for p in self.workers}}

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def get(self) -> dict[str, Any]:
        return self.snapshot()

    async def watch(self, epoch: str | None, version: int, timeout_s: float = SCALER_WATCH_S) -> dict[str, Any]:
        """The snapshot as soon as it differs from (epoch, version), or after `timeout_s` in any case."""
        if epoch == self.epoch and version >= self.version:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.snapshot()

    async def set(self, pool: str, replicas: int) -> dict[str, Any]:
        """Aim `pool` at `replicas` workers in all: start or stop this scaler's own workers for the difference."""
        if pool not in self.workers:
            raise NotFound(f"unknown pool {pool!r}; pools: {sorted(self.workers)}")
        if self.config.models[pool].hosting == "ray":  # the pool's Serve deployment (router/ray_pools.py)
            from router.ray_pools import NotScalable, scale_pool

            try:
                await scale_pool(self.config, pool, replicas)
            except NotScalable as e:
                raise ScalingUnavailable(str(e)) from None
            self.targets[pool] = replicas
            self._bump()
            return {**self.snapshot(), "how": "Ray Serve deployment replicas placed by resources"}
        floor = len(self.static.get(pool, []))
        self.targets[pool] = max(replicas, floor)
        want = self.targets[pool] - floor
        mine = self.workers[pool]
        while len(mine) > want:  # newest first
            w = mine.pop()
            if w.address in self.ready[pool]:
                self.ready[pool].remove(w.address)
            self._spawn(asyncio.to_thread(w.stop, 20.0))
        for _ in range(want - len(mine)):
            w = self._start(pool)
            mine.append(w)
            self._spawn(self._await_ready(pool, w))
        self._bump()
        return self.snapshot()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, pool: str):
        from router.launcher import WorkerProcess, free_port
        from workers.kv.secrets import write_private_file

        import json

        engine = self.config.models[pool].engine_dict()
        engine["kv_connector"] = None  # NOTE: scaler-started workers keep a local prefix cache only
        index = self._next_index
        self._next_index += 1
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        config_file = write_private_file(self.run_dir / "workers" / f"scaled-{pool}-{index}.json", json.dumps(engine))
        w = WorkerProcess(pool, index, free_port(), config_file.resolve(), self.run_dir / "logs" / f"scaled-{pool}-{index}.log")
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
        w.start(extra_env={"PYTHONPATH": pythonpath})
        log.info("scaler: starting worker %s#%d on %s", pool, index, w.address)
        return w

    async def _await_ready(self, pool: str, w, timeout_s: float = 900.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if w not in self.workers[pool]:
                return  # scaled down before it was ready
            if w.ready():
                self.ready[pool].append(w.address)
                log.info("scaler: worker %s#%d ready on %s", pool, w.index, w.address)
                self._bump()
                return
            if w.proc.poll() is not None:
                log.warning("scaler: worker %s#%d exited with %s while loading (log %s)", pool, w.index,
                            w.proc.returncode, w.log_path)
                self.workers[pool].remove(w)
                self._bump()
                return
            await asyncio.sleep(0.5)

    def __del__(self) -> None:
        for mine in getattr(self, "workers", {}).values():
            for w in mine:
                try:
                    w.stop(5.0)
                except Exception:  # noqa: BLE001 - best effort at teardown
                    pass
