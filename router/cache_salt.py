"""Per-tenant prefix-cache salt: which requests may share cached prompt prefixes.

With `redis.tenant_isolation: per_tenant` (the default) every model call of a request carries
its tenant's salt (`GenerateRequest.cache_salt`, vLLM's `cache_salt`): vLLM's own prefix cache
and the Redis KV connector (workers/kv/keys.py chains the block hashes from the salt) share
blocks only between requests of one salt, so a tenant is never served another tenant's cached
prefix and its `cached_prompt_tokens` (and time to first token) say nothing about what other
tenants sent. Tenants mapped to one name in `redis.salt_groups` share a salt.

The salt is HMAC-SHA256(key, "thinkroute-cache-salt/" + group) with the deployment's KV MAC key
(`redis.mac_key_env`): a caller who reaches a worker directly cannot compute another tenant's
salt. Without that key it falls back to an unkeyed SHA-256 (isolation through the router holds;
a direct caller could compute it) and says so once in the log.
"""
from __future__ import annotations

import hashlib
import hmac
import logging

from router.config import RedisConfig
from workers.kv.secrets import read_secret

log = logging.getLogger(__name__)
_warned = False


def tenant_cache_salt(cfg: RedisConfig, tenant: str) -> str:
    """The cache salt of `tenant`'s requests; "" when tenants share the cache (`tenant_isolation: shared`)."""
    global _warned
    if cfg.tenant_isolation == "shared":
        return ""
    material = b"thinkroute-cache-salt/" + cfg.salt_groups.get(tenant, tenant).encode()
    key = read_secret(cfg.mac_key_env)
    if key:
        return hmac.new(key.encode(), material, hashlib.sha256).hexdigest()[:32]
    if not _warned:
        _warned = True
        log.warning("$%s is not set in the router: tenant cache salts are unkeyed hashes of the tenant names",
                    cfg.mac_key_env)
    return hashlib.sha256(material).hexdigest()[:32]
