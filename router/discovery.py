"""`RedisDiscovery`: the router's read side of the worker registry (workers/registration.py).

`registrations()` SCANs `thinkroute:workers:*` and MGETs the values, bounded by `timeout_s`, on a
redis.asyncio client created on the calling loop (it never blocks the event loop). Malformed values
are skipped (logged once each); at most `max_workers` registrations are read. None means the
registry could not be read: the ReplicaSet then keeps its current members.
"""
from __future__ import annotations

import asyncio
import logging

from workers.registration import REGISTRY_PREFIX, Registration, async_redis, parse_registration

log = logging.getLogger("thinkroute.router.discovery")


class RedisDiscovery:
    def __init__(self, url: str, password_env: str | None = None, *, tls: bool = False, tls_ca_file: str | None = None,
                 poll_interval_s: float = 2.0, timeout_s: float = 1.0, max_workers: int = 1024) -> None:
        self.url, self.password_env, self.tls, self.tls_ca_file = url, password_env, tls, tls_ca_file
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False
        self._bad: set[bytes] = set()

    def _redis(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = async_redis(self.url, self.password_env, self.tls, self.tls_ca_file, self.timeout_s)
            self._loop = loop
        return self._client

    async def _read(self) -> list[Registration]:
        client = self._redis()
        keys: list[bytes] = []
        async for k in client.scan_iter(match=f"{REGISTRY_PREFIX}*", count=256):
            keys.append(k)
            if len(keys) >= self.max_workers:
                break
        if not keys:
            return []
        out = []
        for k, raw in zip(keys, await client.mget(keys)):
            if raw is None:  # expired between SCAN and MGET
                continue
            reg = parse_registration(raw)
            if reg is None:
                if k not in self._bad:
                    self._bad.add(k)
                    log.warning("ignoring a malformed worker registration under %r", k[:200])
                continue
            out.append(reg)
        return out

    async def registrations(self) -> list[Registration] | None:
        try:
            regs = await asyncio.wait_for(self._read(), self.timeout_s * 2)
        except Exception as e:  # noqa: BLE001 - registry down: keep the current members
            if not self._failing:
                log.warning("cannot read the worker registry %s (%s); keeping the current replicas", self.url,
                            type(e).__name__)
                self._failing = True
            return None
        if self._failing:
            log.warning("the worker registry is readable again")
            self._failing = False
        return regs

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001
                pass
            self._client = None


def discovery_from_config(config) -> RedisDiscovery | None:
    """The registry reader `config.router.discovery` asks for (router/config.py), or None when it is off.
    The registry's Redis: `discovery.url`, else `redis.url`, else the one `thinkroute serve` starts."""
    d = config.router.discovery
    if not d.enabled:
        return None
    url = d.url or config.redis.url
    tls, ca = d.tls, d.tls_ca_file
    if url is None:
        tls = tls or config.redis.tls
        ca = ca or config.redis.tls_ca_file
        url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{config.redis.port}/0"
    return RedisDiscovery(url, d.password_env, tls=tls, tls_ca_file=ca, poll_interval_s=d.poll_interval_s)
