"""Redis access for the prefix cache: batched, bounded, and never an error for the caller.

Every call is one round trip (MGET, or a non-transactional pipeline). Any Redis failure
(down, refused, timeout, OOM "command not allowed when used memory > maxmemory", a missing
or wrong password: NOAUTH / WRONGPASS, a TLS handshake failure)
becomes a miss / a dropped write, is counted in `StoreStats`, and is logged once per
failure streak (again when Redis comes back). After a failure the store stays
"open-circuit" for `retry_after_s`, so a dead or slow Redis costs each request nothing,
instead of a connect timeout per request.

Writes go through `BackgroundWriter`: a daemon thread and a bounded queue (by bytes), so
a save never blocks the forward pass and a slow Redis can never grow worker memory
without bound: when the queue is full, new writes are dropped and counted.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import redis

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """Counters, monotonically increasing, read by the connector's stats()."""

    lookups: int = 0
    errors: int = 0
    skipped_open_circuit: int = 0
    writes: int = 0
    write_bytes: int = 0
    dropped_writes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class StoreConfig:
    url: str = "redis://127.0.0.1:6379/0"
    """redis:// or rediss:// (TLS) URL, without a password (see `password_env`)."""
    password: str | None = None
    """AUTH password given in-process (tests); overrides `password_env`. Never from config files or argv."""
    password_env: str | None = None
    """Environment variable holding the AUTH password (or `<name>_FILE`, a 0600 file; see secrets.py)."""
    tls: bool = False
    """Use TLS even for a redis:// URL."""
    tls_ca_file: str | None = None
    """CA bundle that signed the server's certificate (None = the system's trust store)."""
    tls_cert_file: str | None = None
    """Client certificate, when the server requires one (`tls-auth-clients yes`)."""
    tls_key_file: str | None = None
    """Key of `tls_cert_file`."""
    socket_timeout_s: float = 1.0
    """Per-command timeout; a slower Redis counts as down."""
    connect_timeout_s: float = 0.5
    retry_after_s: float = 2.0
    """After a failure, skip Redis for this long (answer misses) before trying again."""
    ttl_s: int = 3600
    """Expiry of every stored block; LRU on the instance evicts earlier under memory pressure."""


def redis_client(cfg: StoreConfig) -> redis.Redis:
    """A client for `cfg`: password from `cfg.password` or the environment, TLS when asked.

    Raises SecretError when a password file is unsafe; never puts the password into the URL.
    """
    from workers.kv.secrets import read_secret

    kwargs: dict = dict(socket_timeout=cfg.socket_timeout_s, socket_connect_timeout=cfg.connect_timeout_s)
    password = cfg.password if cfg.password is not None else read_secret(cfg.password_env)
    if password is not None:
        kwargs["password"] = password
    url = cfg.url
    if cfg.tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://"):]
    if url.startswith("rediss://"):
        kwargs.update(ssl_cert_reqs="required", ssl_ca_certs=cfg.tls_ca_file,
                      ssl_certfile=cfg.tls_cert_file, ssl_keyfile=cfg.tls_key_file)
    return redis.Redis.from_url(url, **kwargs)


class RedisStore:
    """Thread-safe (redis-py's connection pool is) wrapper with fault handling."""

    def __init__(self, cfg: StoreConfig, client: redis.Redis | None = None, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.stats = StoreStats()
        self._clock = clock
        self._down_until = 0.0
        self._failing = False
        self.client = client or redis_client(cfg)

    # -- fault handling -------------------------------------------------------------
    def available(self) -> bool:
        if self._clock() < self._down_until:
            self.stats.skipped_open_circuit += 1
            return False
        return True

    def _fail(self, what: str, e: Exception) -> None:
        self.stats.errors += 1
        self._down_until = self._clock() + self.cfg.retry_after_s
        if not self._failing:
            self._failing = True
            log.warning("redis prefix cache unavailable (%s: %s: %s); serving without it, retrying every %.1f s",
                        what, type(e).__name__, e, self.cfg.retry_after_s)

    def _ok(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("redis prefix cache reachable again")

    def run(self, what: str, fn: Callable[[redis.Redis], object], default):
        """Run `fn(client)`; on any Redis/socket error return `default` and open the circuit."""
        if not self.available():
            return default
        try:
            out = fn(self.client)
        except (redis.RedisError, OSError) as e:
            self._fail(what, e)
            return default
        self._ok()
        return out

    # -- operations -----------------------------------------------------------------
    def count_leading(self, keys: Sequence[bytes], group: int = 1) -> int:
        """How many groups of `group` consecutive keys, from the first, exist entirely
        (one pipelined EXISTS round trip). `group` = 1: how many leading keys exist."""
        if not keys:
            return 0
        self.stats.lookups += 1

        def q(c: redis.Redis) -> int:
            p = c.pipeline(transaction=False)
            for k in keys:
                p.exists(k)
            hits = p.execute()
            n = 0
            for i in range(0, len(hits) - group + 1, group):
                if not all(hits[i:i + group]):
                    break
                n += 1
            return n

        return self.run("exists", q, 0)

    def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        return self.run("mget", lambda c: c.mget(list(keys)), [None] * len(keys))

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int | None = None) -> bool:
        ttl = ttl_s or self.cfg.ttl_s

        def w(c: redis.Redis) -> bool:
            p = c.pipeline(transaction=False)
            for k, v in items:
                p.set(k, v, ex=ttl)
            p.execute()
            return True

        ok = self.run("set", w, False)
        if ok:
            self.stats.writes += len(items)
            self.stats.write_bytes += sum(len(v) for _, v in items)
        return bool(ok)


    def delete(self, keys: Sequence[bytes]) -> None:
        """Drop values (a corrupted block), so the next computation of it is saved again."""
        if keys:
            self.run("del", lambda c: c.delete(*keys), 0)


class BackgroundWriter:
    """One daemon thread draining a queue of write jobs, bounded by `max_pending_bytes`."""

    def __init__(self, stats: StoreStats, max_pending_bytes: int = 256 << 20, name: str = "trkv-writer"):
        self.stats = stats
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def submit(self, job: Callable[[], object], nbytes: int) -> bool:
        """Queue `job`; returns False (and counts a drop) when the queue is over budget."""
        with self._lock:
            if self._pending_bytes + nbytes > self.max_pending_bytes:
                self.stats.dropped_writes += 1
                return False
            self._pending_bytes += nbytes
        self._q.put((job, nbytes))
        return True

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._q.task_done()
                return
            job, nbytes = item
            try:
                job()
            except Exception:  # noqa: BLE001 - a failed cache write must never kill the worker
                log.exception("prefix-cache write failed")
            finally:
                with self._lock:
                    self._pending_bytes -= nbytes
                self._q.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued job ran; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._q.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._q.put(None)
        self._thread.join(timeout_s)
