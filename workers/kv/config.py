"""Build the vLLM `kv_transfer_config` dict that turns the Redis prefix cache on.

    EngineConfig(model="smollm2-135m", kv_connector=redis_kv_transfer_config(
        "redis://127.0.0.1:6390/0", replica_id="smollm2-0", model_id="smollm2-135m"))

The dict holds no secret: vLLM logs its config, and `thinkroute serve` hands it to the
worker. The Redis password and the blocks' MAC key are read by the connector from the
environment variables it names (`password_env`, `mac_key_env`; or a 0600 file named by
`<VAR>_FILE`, see secrets.py). A URL with a password in it is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workers.kv.secrets import MAC_KEY_ENV, REDIS_PASSWORD_ENV, url_has_password

CONNECTOR_NAME = "RedisKVConnector"
CONNECTOR_MODULE = "workers.kv.connector"


@dataclass
class RedisKVSettings:
    """`kv_connector_extra_config` of the connector; every field has a working default."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """redis:// or rediss:// URL of a Redis dedicated to the cache (maxmemory + allkeys-lru); no password in it."""
    password_env: str = REDIS_PASSWORD_ENV
    """Environment variable holding the Redis AUTH password (unset = no AUTH)."""
    mac_key_env: str = MAC_KEY_ENV
    """Environment variable holding the MAC key of stored blocks (>= 16 bytes); unset = the cache is off."""
    tls: bool = False
    """Use TLS even for a redis:// URL."""
    tls_ca_file: str | None = None
    """CA bundle that signed the Redis server's certificate (None = system trust store)."""
    tls_cert_file: str | None = None
    """Client certificate for Redis (when it requires one)."""
    tls_key_file: str | None = None
    """Key of `tls_cert_file`."""
    weights_fingerprint: str = ""
    """Namespace component naming the weights; empty = computed from the model directory (workers/convert.py)."""
    ttl_s: int = 3600
    """Expiry of every stored KV block."""
    model_id: str = ""
    """Replica-independent model name for the key namespace; empty = vLLM's served model name."""
    replica_id: str = ""
    """This replica's id in the prefix index (what the router's pool calls it); empty = no index writes."""
    warm_ttl_s: int = 600
    """How long an index entry says a replica is warm for a block."""
    socket_timeout_s: float = 1.0
    """Per-command Redis timeout; slower counts as down (a miss)."""
    retry_after_s: float = 2.0
    """After a Redis failure, answer misses without trying for this long."""
    max_pending_save_bytes: int = 256 << 20
    """Bound on encoded blocks queued for Redis in the worker; beyond it saves are dropped."""
    min_load_blocks: int = 1
    """Only load from Redis when it holds at least this many blocks beyond the local hit."""
    save: bool = True
    """Write newly computed full blocks (False = read-only replica)."""
    load: bool = True
    """Read blocks from Redis (False = write-only, e.g. a warmer)."""

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> "RedisKVSettings":
        extra = dict(extra or {})
        known = set(cls.__dataclass_fields__)
        if "password" in extra:
            raise ValueError("kv_connector_extra_config must not hold the Redis password (vLLM logs its config); "
                             f"put it in the environment variable named by password_env (default {REDIS_PASSWORD_ENV})")
        bad = sorted(set(extra) - known)
        if bad:
            raise ValueError(f"unknown kv_connector_extra_config keys {bad}; valid keys are {sorted(known)}")
        s = cls(**extra)
        if url_has_password(s.redis_url):
            raise ValueError("redis_url must not carry a password (vLLM logs its config and it would reach argv); "
                             f"put it in the environment variable named by password_env ({s.password_env})")
        if s.ttl_s <= 0 or s.warm_ttl_s <= 0:
            raise ValueError(f"ttl_s and warm_ttl_s must be > 0 seconds, got {s.ttl_s}, {s.warm_ttl_s}")
        return s


def redis_kv_transfer_config(redis_url: str, replica_id: str = "", *, model_id: str = "", **settings: Any) -> dict:
    """The `kv_transfer_config` dict for vLLM (`EngineConfig.kv_connector`)."""
    extra = asdict(RedisKVSettings.from_extra({"redis_url": redis_url, "replica_id": replica_id, "model_id": model_id, **settings}))
    return {
        "kv_connector": CONNECTOR_NAME,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_both",
        # A block Redis promised but could not deliver (evicted, corrupted, Redis died) is
        # recomputed instead of failing the request.
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": extra,
    }
