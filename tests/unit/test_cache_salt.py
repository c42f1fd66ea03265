"""Per-tenant prefix-cache salts (router/cache_salt.py) and the Redis config that drives them."""
import pytest
from pydantic import ValidationError

from router.cache_salt import tenant_cache_salt
from router.config import RedisConfig


def test_each_tenant_gets_its_own_keyed_salt(monkeypatch):
    monkeypatch.setenv("THINKROUTE_KV_MAC_KEY", "k" * 32)
    cfg = RedisConfig()
    a, b = tenant_cache_salt(cfg, "acme"), tenant_cache_salt(cfg, "globex")
    assert a and b and a != b and a == tenant_cache_salt(cfg, "acme")
    monkeypatch.setenv("THINKROUTE_KV_MAC_KEY", "j" * 32)
    assert tenant_cache_salt(cfg, "acme") != a  # keyed: not computable from the tenant name alone


def test_groups_share_and_shared_mode_turns_it_off(monkeypatch):
    monkeypatch.setenv("THINKROUTE_KV_MAC_KEY", "k" * 32)
    cfg = RedisConfig(salt_groups={"acme-eu": "acme", "acme-us": "acme"})
    assert tenant_cache_salt(cfg, "acme-eu") == tenant_cache_salt(cfg, "acme-us") != tenant_cache_salt(cfg, "globex")
    assert tenant_cache_salt(RedisConfig(tenant_isolation="shared"), "acme") == ""


def test_without_the_key_salts_still_separate_tenants(monkeypatch):
    monkeypatch.delenv("THINKROUTE_KV_MAC_KEY", raising=False)
    monkeypatch.delenv("THINKROUTE_KV_MAC_KEY_FILE", raising=False)
    cfg = RedisConfig()
    assert tenant_cache_salt(cfg, "acme") != tenant_cache_salt(cfg, "globex")


def test_redis_config_refuses_secrets_in_the_url():
    with pytest.raises(ValidationError, match="must not carry a password"):
        RedisConfig(url="redis://:hunter2@10.0.0.5:6379/0")
    with pytest.raises(ValidationError, match="tls_key_file"):
        RedisConfig(tls=True, tls_cert_file="/etc/redis/tls/redis.crt")
    assert RedisConfig(url="rediss://10.0.0.5:6379/0", tls_ca_file="/ca.crt").url


def test_every_generate_call_of_a_request_carries_its_salt_to_the_wire(monkeypatch):
    """Context (router/strategies/base.py) puts the salt on the sampling; the worker client on the request."""
    import asyncio

    from router.strategies.base import Context
    from router.trace import ModelCallRecord, Trace
    from router.worker_client import WorkerClient
    from workers.types import PromptInput, Sampling

    seen = []

    class Pool:
        async def generate(self, model, prompt, sampling, *, deadline, on_delta=None):
            seen.append(sampling)
            return object(), ModelCallRecord(model=model, role="", kind="generate", replica="r")

    ctx = Context(Pool(), {"model": "m"}, Trace(), deadline=1e12, cache_salt="salt-a")
    asyncio.run(ctx.generate("model", PromptInput(text="hi"), Sampling(max_tokens=4)))
    assert seen[0].cache_salt == "salt-a"

    class Stub:
        def Generate(self, req, timeout):
            seen.append(req)

    monkeypatch.setattr(WorkerClient, "stub", property(lambda self: Stub()))  # no channel: capture the request
    client = WorkerClient("127.0.0.1:1")
    client.generate(PromptInput(text="hi"), seen[0], timeout=1)
    assert seen[1].cache_salt == "salt-a"
