"""`ReplicaSet`: the replicas of every model pool, where they come from, and which of them may serve.

Sources. Static addresses (config `models.<name>.addresses`, the workers `thinkroute serve` starts)
are always members. With a `Discovery` (router/discovery.py, the Redis worker registry), every
`poll_interval_s` the registered workers of the known pools join and the ones whose registration
expired leave (a worker that stops heartbeating is gone at most `ttl + poll_interval_s` after its
last heartbeat, see workers/registration.py). A registry that cannot be read changes nothing (health
probing still takes dead workers out of traffic). A replica that leaves while calls run on it keeps
its channel until they end.

Health. Every `health_interval_s` each replica gets a grpc.health.v1 `Check` (service
`thinkroute.v1.Worker`) bounded by `health_timeout_s`, and, when it is SERVING, a `Load` call (the
numbers `PoolStats` reports). NOT_SERVING (a draining or dead engine) makes it unhealthy at once; no
answer in time (a hung worker) or a transport error makes it unhealthy after `unhealthy_after`
probes in a row; one SERVING answer makes it healthy again. `candidates()` offers only healthy
replicas that are not marked down: a call that failed with UNAVAILABLE marks its replica down for
`down_cooldown_s` (the Caller's rule), so a dead worker costs one failed call, not one per request.

The probe and discovery loops run as tasks on the event loop that serves calls, started lazily by
`ensure_running()` (grpc.aio and redis.asyncio objects are loop-bound); `health_interval_s=None` and no
discovery start none (unit tests, one-shot CLI tools).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import grpc

from router.errors import NotFound
from router.scaling import ReplicaLoad
from router.worker_client import WorkerClient
from workers.registration import Registration

log = logging.getLogger("thinkroute.router.replicas")

SERVING = 1  # grpc.health.v1.HealthCheckResponse.SERVING


@dataclass(eq=False)
class Replica:
    """One worker of one pool, with the router's view of it. `inflight` is reserved by the Picker and
    released by the Caller; the rest is written by the ReplicaSet."""

    address: str
    model: str
    client: WorkerClient
    inflight: int = 0
    down_until: float = 0.0
    replica_id: str = ""
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=512))
    healthy: bool = True
    """Last health verdict (probing off: always True)."""
    probe_failures: int = 0
    source: str = "static"
    """`static` (config / launcher) or `registry` (discovered)."""
    info: object | None = None
    """The worker's InfoResponse once fetched (replica id, KV namespace, capacity)."""
    load: object | None = None
    """The worker's last LoadResponse (probing), None when it did not answer."""
    probed_at: float = 0.0
    """When it was last probed (0 = never)."""
    registered_as: str = ""
    """The replica id of its registry entry (registry replicas): a new one means a new worker process."""


class Discovery(Protocol):
    poll_interval_s: float

    async def registrations(self) -> list[Registration] | None:
        """The current registrations, or None when the registry cannot be read now."""

    async def close(self) -> None: ...


class ReplicaSet:
    def __init__(self, addresses: dict[str, list[str]], client_factory: Callable[[str], WorkerClient] = WorkerClient, *,
                 down_cooldown_s: float = 2.0, health_interval_s: float | None = None, health_timeout_s: float = 2.0,
                 unhealthy_after: int = 3, discovery: Discovery | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not addresses:
            raise ValueError("a worker pool needs at least one model")
        if discovery is None and not any(addresses.values()):
            raise ValueError("a worker pool needs at least one replica (or discovery)")
        self.client_factory = client_factory
        self.down_cooldown_s = down_cooldown_s
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.unhealthy_after = max(1, unhealthy_after)
        self.discovery = discovery
        self.clock = clock
        self.replicas: dict[str, list[Replica]] = {
            model: [Replica(a, model, client_factory(a)) for a in addrs] for model, addrs in addresses.items()
        }
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retired: list[Replica] = []
        self._unknown_pools: set[str] = set()
        self._changed: Callable[[], Awaitable[None]] | None = None
        self._first_read: asyncio.Task | None = None

    # -- membership ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(self.replicas)

    def pool(self, model: str) -> list[Replica]:
        """Every replica of `model`, healthy or not; NotFound for an unknown model."""
        try:
            return self.replicas[model]
        except KeyError:
            raise NotFound(f"unknown model {model!r}; this router serves {self.models()}") from None

    def candidates(self, model: str, exclude: set[str] | frozenset = frozenset()) -> list[Replica]:
        """Replicas of `model` that may take a call now: healthy, not marked down, not in `exclude`."""
        now = self.clock()
        return [r for r in self.pool(model) if r.healthy and r.down_until <= now and r.address not in exclude]

    def mark_down(self, replica: Replica) -> None:
        replica.down_until = self.clock() + self.down_cooldown_s

    def add(self, model: str, address: str, *, source: str = "static", replica_id: str = "") -> Replica:
        pool = self.pool(model)
        for r in pool:
            if r.address == address:
                return r
        r = Replica(address, model, self.client_factory(address), replica_id=replica_id, source=source)
        pool.append(r)
        log.info("replica %s joined pool %s (%s)", address, model, source)
        return r

    def remove(self, replica: Replica, why: str) -> None:
        pool = self.replicas.get(replica.model, [])
        if replica in pool:
            pool.remove(replica)
            self._retired.append(replica)
            log.info("replica %s left pool %s (%s)", replica.address, replica.model, why)

    # -- what the picker asks ----------------------------------------------------------------------
    async def describe(self, replica: Replica, timeout: float = 2.0):
        """The replica's InfoResponse (fetched once; None while it does not answer)."""
        if replica.info is None:
            try:
                replica.info = await replica.client.info(timeout=timeout)
            except (grpc.aio.AioRpcError, asyncio.TimeoutError):
                return None
            if replica.info.replica_id:
                replica.replica_id = replica.info.replica_id
        return replica.info

    def loads(self, model: str) -> list[ReplicaLoad]:
        """Last Load reports of the healthy replicas of `model` (see `probe_all`)."""
        now = self.clock()
        return [ReplicaLoad(r.load.running, r.load.queued, r.load.max_concurrency) for r in self.pool(model)
                if r.load is not None and r.healthy and r.down_until <= now]

    # -- health ----------------------------------------------------------------------------------
    async def probe(self, replica: Replica, verdict: bool = True) -> bool:
        """One health check (+ Load when SERVING) of `replica`: True when it answered SERVING. With `verdict`
        its `healthy` flag follows the rule of the module docstring; without, only `load` is updated."""
        explicit = False
        replica.probed_at = self.clock()
        try:
            status = await asyncio.wait_for(replica.client.health(timeout=self.health_timeout_s),
                                            self.health_timeout_s + 0.5)
            ok, explicit = status == SERVING, True
        except grpc.aio.AioRpcError as e:
            ok = e.code() == grpc.StatusCode.UNIMPLEMENTED  # a server without the health service: cannot tell
        except (asyncio.TimeoutError, OSError):
            ok = False
        if ok and not verdict:
            replica.load = await self._load(replica)
            return True
        if ok:
            if not replica.healthy:
                log.warning("replica %s of pool %s is healthy again", replica.address, replica.model)
            replica.healthy, replica.probe_failures = True, 0
            replica.load = await self._load(replica)
            await self.describe(replica, self.health_timeout_s)
            return True
        replica.load = None
        if not verdict:
            return False
        replica.probe_failures += 1
        if replica.healthy and (explicit or replica.probe_failures >= self.unhealthy_after):
            replica.healthy = False
            log.warning("replica %s of pool %s is unhealthy (%s): no traffic until it answers SERVING",
                        replica.address, replica.model, "NOT_SERVING" if explicit else
                        f"{replica.probe_failures} failed health checks")
        return False

    async def _load(self, replica: Replica):
        try:
            return await replica.client.load(timeout=self.health_timeout_s)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            return None

    async def probe_all(self, verdict: bool = True) -> None:
        """Probe every replica at once (the health loop's round; `verdict=False`: refresh loads only)."""
        everyone = [r for pool in self.replicas.values() for r in pool]
        await asyncio.gather(*(self.probe(r, verdict) for r in everyone))

    # -- discovery -------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Apply the registry: join new registrations of known pools (after one health check), drop expired ones."""
        if self.discovery is None:
            return
        regs = await self.discovery.registrations()
        if regs is None:
            return
        wanted: dict[str, dict[str, Registration]] = {m: {} for m in self.replicas}
        for reg in regs:
            if reg.pool not in wanted:
                if reg.pool not in self._unknown_pools:
                    self._unknown_pools.add(reg.pool)
                    log.warning("worker %s registered for pool %r, which this router's config does not have; "
                                "ignored (pools: %s)", reg.address, reg.pool, self.models())
                continue
            wanted[reg.pool][reg.address] = reg
        for model, regs_by_address in wanted.items():
            pool = self.replicas[model]
            for r in [r for r in pool if r.source == "registry" and r.address not in regs_by_address]:
                self.remove(r, "registration expired or withdrawn")
            for r in pool:  # a worker restarted on the same address: forget the old process's Info
                reg = regs_by_address.get(r.address)
                if r.source == "registry" and reg is not None and reg.replica_id != r.registered_as:
                    r.info, r.replica_id, r.registered_as = None, reg.replica_id, reg.replica_id
            present = {r.address for r in pool}
            fresh = [reg for a, reg in regs_by_address.items() if a not in present]
            for reg in fresh:
                r = Replica(reg.address, model, self.client_factory(reg.address), replica_id=reg.replica_id,
                            source="registry", registered_as=reg.replica_id)
                if self.health_interval_s is not None and not await self.probe(r):
                    r.healthy = False  # joins, but gets traffic only after a SERVING answer
                if any(x.address == reg.address for x in pool):  # a concurrent refresh added it meanwhile
                    await r.client.close()
                    continue
                pool.append(r)
                log.info("replica %s (%s) joined pool %s from the registry", reg.address, reg.replica_id, model)
        await self._close_retired()

    async def _close_retired(self) -> None:
        for r in [r for r in self._retired if r.inflight == 0]:
            self._retired.remove(r)
            try:
                await r.client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass

    async def first_registry_read(self) -> None:
        """Wait, once, for the first read of the registry (a router just started has not polled it yet: its pools
        of registered workers would look empty to the first requests). No-op without discovery or afterwards."""
        if self.discovery is None:
            return
        loop = asyncio.get_running_loop()
        if self._first_read is None:
            self._first_read = loop.create_task(self.refresh())
        if not self._first_read.done() and self._first_read.get_loop() is loop:
            try:
                await asyncio.shield(self._first_read)
            except Exception:  # noqa: BLE001 - the discovery loop keeps trying; pick from what is there
                pass

    # -- background loops --------------------------------------------------------------------------
    def ensure_running(self) -> None:
        """Start the probe / discovery loops on the running event loop (idempotent; restarts them on a new loop)."""
        if self.health_interval_s is None and self.discovery is None:
            return
        loop = asyncio.get_running_loop()
        if self._loop is loop and all(not t.done() for t in self._tasks):
            return
        for t in self._tasks:
            t.cancel()
        self._loop = loop
        self._tasks = []
        if self.health_interval_s is not None:
            self._tasks.append(loop.create_task(self._every(self.health_interval_s, self.probe_all),
                                                name="thinkroute-health"))
        if self.discovery is not None:
            self._tasks.append(loop.create_task(self._every(self.discovery.poll_interval_s, self.refresh),
                                                name="thinkroute-discovery"))

    async def _every(self, period: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a loop that dies would freeze the pool's view
                log.exception("replica set loop %s failed; continuing", getattr(fn, "__name__", fn))
            await asyncio.sleep(period)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks = []
        if self.discovery is not None:
            await self.discovery.close()
        for pool in self.replicas.values():
            for r in pool:
                await r.client.close()
        for r in self._retired:
            await r.client.close()
        self._retired = []
