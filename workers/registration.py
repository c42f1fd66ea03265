"""Worker discovery through Redis: a worker registers itself, the router's pool follows the registry.

A registered worker writes one key, `thinkroute:workers:<pool>:<replica_id>`, holding a JSON
`Registration` (pool, model id, address the router should dial, capacity, replica id, heartbeat), with
a TTL of `ttl_factor` x `heartbeat_s` (default 3 x 2 s), and rewrites it every `heartbeat_s`. A worker
that stops heartbeating (killed, host gone, hung) disappears from the registry when the key expires,
at most `ttl_factor x heartbeat_s` after its last heartbeat; one that drains (SIGTERM) deletes its key
first. The router reads the registry every `router.discovery.poll_interval_s` (router/discovery.py),
so a stopped worker leaves the router's pool at most `ttl_factor x heartbeat_s + poll_interval_s`
after its last heartbeat (8 s with the defaults), and a new one joins within `poll_interval_s`.

Redis auth: the password comes from the environment variable `password_env` (or a 0600 file named by
`<VAR>_FILE`, workers/kv/secrets.py), never from argv or a URL. Registry values are data to the
router: `parse_registration` bounds and validates every field.

The same module serves both sides (workers never import router/): `Registrar` (worker) writes,
`parse_registration` and `REGISTRY_PREFIX` (router) read.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("thinkroute.worker.registration")

REGISTRY_PREFIX = "thinkroute:workers:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):[0-9]{1,5}$")
MAX_VALUE_BYTES = 4096


@dataclass(frozen=True)
class Registration:
    """One registered worker, as stored in Redis."""

    pool: str
    """Model pool name in the router's config (`models.<name>`); usually the model's registry name."""
    model_id: str
    """What the worker serves (its `Info.model_id`)."""
    address: str
    """host:port the router dials (the worker's advertised address, not necessarily the one it binds)."""
    replica_id: str
    """Unique per worker process (its `Info.replica_id`)."""
    capacity: int = 1
    """Requests it runs at once (max_concurrency)."""
    heartbeat_s: float = 2.0
    """How often it rewrites its key."""

    @property
    def key(self) -> str:
        return registration_key(self.pool, self.replica_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def registration_key(pool: str, replica_id: str) -> str:
    return f"{REGISTRY_PREFIX}{pool}:{replica_id}"


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value or ""):
        raise ValueError(f"{what} {value!r} is not a valid name: 1-128 characters of letters, digits and ._@:- "
                         "starting with a letter or digit")
    return value


def check_address(value: str) -> str:
    """`host:port` (IPv6 in brackets); ValueError naming the value otherwise."""
    if not _ADDRESS.match(value or "") or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"address {value!r} is not host:port (port 1-65535)")
    return value


def advertised_address(bound: str) -> str:
    """The address to register for a server bound to `bound`: itself, unless it binds every interface
    (0.0.0.0 / [::]), then `$POD_IP` (Kubernetes downward API) or this host's name, with the bound port."""
    import os
    import socket

    host, _, port = bound.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = os.environ.get("POD_IP") or socket.getfqdn()
    return f"{host}:{port}"


def parse_registration(raw: bytes | str) -> Registration | None:
    """The registration in a registry value, or None when it is malformed (logged by the caller)."""
    if raw is None or len(raw) > MAX_VALUE_BYTES:
        return None
    try:
        d = json.loads(raw)
        reg = Registration(pool=check_name("pool", str(d["pool"])), model_id=str(d["model_id"])[:256],
                           address=check_address(str(d["address"])),
                           replica_id=check_name("replica_id", str(d["replica_id"])),
                           capacity=max(1, min(int(d.get("capacity", 1)), 1 << 16)),
                           heartbeat_s=max(0.1, min(float(d.get("heartbeat_s", 2.0)), 3600.0)))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return reg


class RegistrationConfig(BaseModel):
    """How a worker registers itself (`thinkroute worker --register URL`, or `registration:` in its --config)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str
    """Redis of the registry: redis:// or rediss://host:port/db, without a password."""
    pool: str = ""
    """Pool name the router knows this worker by; empty = the model's name."""
    advertise: str = ""
    """host:port the router should dial; empty = the bound address (with host 0.0.0.0: $POD_IP or this host's name)."""
    heartbeat_s: float = Field(2.0, gt=0, le=300)
    """Seconds between heartbeats."""
    ttl_factor: int = Field(3, ge=2, le=20)
    """The key expires after ttl_factor x heartbeat_s without a heartbeat."""
    password_env: str = "THINKROUTE_REDIS_PASSWORD"
    """Environment variable holding the Redis password (or `<VAR>_FILE`, a 0600 file); unset = no AUTH."""
    tls: bool = False
    """TLS to Redis even for a redis:// URL."""
    tls_ca_file: str | None = None
    """CA bundle that signed Redis' certificate."""

    @model_validator(mode="after")
    def _check(self) -> "RegistrationConfig":
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"registration url {self.url!r} must be redis:// or rediss://")
        if parts.password is not None:
            raise ValueError(f"the registration url must not carry a password (argv and logs would show it); "
                             f"put it in ${self.password_env}")
        if self.pool:
            check_name("registration pool", self.pool)
        if self.advertise:
            check_address(self.advertise)
        return self

    @property
    def ttl_s(self) -> int:
        return max(1, int(round(self.ttl_factor * self.heartbeat_s + 0.499)))


def async_redis(url: str, password_env: str | None, tls: bool = False, tls_ca_file: str | None = None,
                timeout_s: float = 1.0):
    """A redis.asyncio client (loop-bound: create it on the loop that uses it); password from the environment."""
    import redis.asyncio as aioredis

    from workers.kv.secrets import read_secret

    kwargs: dict = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    password = read_secret(password_env) if password_env else None
    if password is not None:
        kwargs["password"] = password
    if tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://"):]
    if url.startswith("rediss://") and tls_ca_file:
        kwargs["ssl_ca_certs"] = tls_ca_file
    return aioredis.Redis.from_url(url, **kwargs)


class Registrar:
    """Keeps `registration` in the registry while the worker serves. Use on the serving event loop:
    `await start()` after the server is up (the first write is awaited: a bad URL or password fails the
    start), `await stop()` before draining (deletes the key). Heartbeat failures are logged, retried."""

    def __init__(self, cfg: RegistrationConfig, registration: Registration) -> None:
        self.cfg, self.registration = cfg, registration
        self._client = None
        self._task: asyncio.Task | None = None
        self.heartbeats = 0
        self._failing = False

    async def _beat(self) -> None:
        await self._client.set(self.registration.key, self.registration.to_json(), ex=self.cfg.ttl_s)
        self.heartbeats += 1

    async def start(self) -> None:
        self._client = async_redis(self.cfg.url, self.cfg.password_env, self.cfg.tls, self.cfg.tls_ca_file,
                                   timeout_s=min(2.0, self.cfg.heartbeat_s))
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name="thinkroute-registration")
        log.info("registered %s as %s in pool %s (heartbeat %.1f s, ttl %d s)", self.registration.address,
                 self.registration.replica_id, self.registration.pool, self.cfg.heartbeat_s, self.cfg.ttl_s)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            try:
                await self._beat()
                if self._failing:
                    log.warning("registry heartbeat works again")
                    self._failing = False
            except Exception as e:  # noqa: BLE001 - Redis down: keep trying, the router keeps us until expiry
                if not self._failing:
                    log.warning("registry heartbeat failed (%s); retrying every %.1f s", type(e).__name__,
                                self.cfg.heartbeat_s)
                    self._failing = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._client is not None:
            try:
                await self._client.delete(self.registration.key)
            except Exception as e:  # noqa: BLE001 - the key expires anyway
                log.warning("could not remove the registration (%s); it expires in %d s", type(e).__name__,
                            self.cfg.ttl_s)
            await self._client.aclose()
            self._client = None
