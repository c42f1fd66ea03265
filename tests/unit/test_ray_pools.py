"""Ray-hosted pools (router/ray_pools.py): config checks, placement options, the worker's config, scaling
through the PoolScaler. The multi-node behaviour is tests/integration/test_ray_cluster.py."""
from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from router import ray_pools
from router.config import POOL_FIELDS, Config
from workers.config import EngineConfig

REPLAY = {"backend": "replay", "replay": {"file": "../shared/data/routing/gsm8k_6sys_outcomes.dev.jsonl"}}


def config(**ray) -> Config:
    return Config.model_validate({
        "models": {
            "drafter": {"model": "6b_finetuning@replay", **REPLAY, "hosting": "ray", "replicas": 2,
                        "ray": {"resources": {"drafter": 1}, **ray}},
            "reasoner": {"model": "gpt4_1106_preview@replay", **REPLAY, "hosting": "ray", "replicas": 1,
                         "ray": {"resources": {"reasoner": 1}, "num_gpus": 1, "heartbeat_s": 0.5}},
            "local": {"model": "mixtral_8x7b_instruct@replay", **REPLAY, "replicas": 1},
        },
        "router": {"default_model": "drafter", "roles": {"small": "drafter", "large": "reasoner"},
                   "discovery": {"enabled": True}},
        "redis": {"port": 6411},
        "autoscale": {"pools": {"drafter": {"min_replicas": 1, "max_replicas": 3}}},
    })


def test_hosting_ray_needs_discovery_and_names_the_fix():
    with pytest.raises(ValidationError, match="hosting ray needs router.discovery.enabled"):
        Config.model_validate({"models": {"m": {**REPLAY, "model": "x@replay", "hosting": "ray"}},
                               "router": {"default_model": "m", "roles": {}}})
    with pytest.raises(ValidationError):
        Config.model_validate({"models": {"m": {**REPLAY, "model": "x@replay", "hosting": "kubernetes"}},
                               "router": {"default_model": "m", "roles": {}}})


def test_engine_dict_is_a_valid_worker_config_without_the_pool_fields():
    c = config()
    for pool in c.models.values():
        engine = pool.engine_dict()
        assert not set(engine) & POOL_FIELDS
        EngineConfig.model_validate(engine)  # what the launcher, the scaler and hosted replicas give a worker


def test_actor_options_place_replicas_by_resources_and_gpus():
    c = config()
    assert ray_pools.actor_options(c.models["drafter"]) == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"drafter": 1.0}}
    assert ray_pools.actor_options(c.models["reasoner"])["num_gpus"] == 1.0
    assert ray_pools.hosted_pools(c) == ["drafter", "reasoner"]
    # One machine (thinkroute serve): the node gets enough of each resource for every hosted replica it may run.
    assert ray_pools.local_node_resources(c) == {"drafter": 3.0, "reasoner": 4.0}


def test_hosted_worker_config_registers_in_the_routers_registry():
    c = config()
    cfg = ray_pools.worker_config(c, "reasoner")
    reg = cfg.pop("registration")
    assert reg["url"] == "redis://127.0.0.1:6411/0" and reg["pool"] == "reasoner" and reg["heartbeat_s"] == 0.5
    assert reg["password_env"] == "THINKROUTE_REDIS_PASSWORD"  # a variable's name, never the password
    EngineConfig.model_validate(cfg)
    from workers.registration import RegistrationConfig

    RegistrationConfig.model_validate(reg)
    json.dumps(cfg)


def test_worker_config_file_loads_in_thinkroute_worker(tmp_path):
    """The file a hosted replica writes is accepted by `thinkroute worker --config` (the same loader)."""
    import argparse

    from router.commands.worker import load_worker_config

    path = tmp_path / "worker.json"
    path.write_text(json.dumps(ray_pools.worker_config(config(), "drafter")))
    args = argparse.Namespace(**{k: None for k in ("model", "device", "backend", "dtype", "max_model_len", "kv_cache_gib",
                                                   "max_num_seqs", "max_queue", "no_enforce_eager")})
    cfg, reg, _ = load_worker_config(str(path), args)
    assert cfg.model == "6b_finetuning@replay" and reg.pool == "drafter"
    # A router config's models.<name> entry with the hosting keys is accepted as is too.
    entry = tmp_path / "entry.yaml"
    entry.write_text(json.dumps({"model": "x@replay", **REPLAY, "hosting": "ray", "ray": {"num_gpus": 1}, "replicas": 2}))
    assert load_worker_config(str(entry), args)[0].model == "x@replay"


def test_replica_ids_carry_the_node():
    node = "a1b2c3d4e5f6" + "0" * 44
    rid = f"drafter-{node[:ray_pools.NODE_ID_CHARS]}-xk2j9q1z"
    assert ray_pools.node_of(rid) == "a1b2c3d4e5f6"
    assert ray_pools.node_of("drafter-0") == "" and ray_pools.node_of("external-1") == ""


def test_ray_autoscaling_replaces_the_external_scaler():
    assert ray_pools.autoscaling_config(config(), "drafter") is None
    pytest.importorskip("router.ray_autoscaling")
    auto = ray_pools.autoscaling_config(config(autoscaling=True), "drafter")
    assert (auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]) == (1, 3, 2)
    assert auto["policy"]["policy_function"].startswith("router.ray_autoscaling:")


def test_pool_scaler_sets_a_hosted_pools_deployment(monkeypatch, tmp_path):
    from router.cluster_service import PoolScaler, ScalingUnavailable

    calls = []

    async def fake_scale(cfg, pool, replicas):
        if cfg.models[pool].ray.autoscaling:
            raise ray_pools.NotScalable("owned by its policy")
        calls.append((pool, replicas))

    monkeypatch.setattr(ray_pools, "scale_pool", fake_scale)

    async def scenario():
        scaler = PoolScaler(config().model_dump(mode="json"), {}, str(tmp_path))
        snap = await scaler.get()
        assert snap["pools"]["drafter"]["target"] == 2 and snap["pools"]["reasoner"]["target"] == 1
        snap = await scaler.set("drafter", 3)
        assert calls == [("drafter", 3)] and snap["pools"]["drafter"]["target"] == 3
        assert snap["how"].startswith("Ray Serve deployment") and snap["pools"]["drafter"]["started"] == []
        policed = PoolScaler(config(autoscaling=True).model_dump(mode="json"), {}, str(tmp_path))
        with pytest.raises(ScalingUnavailable, match="owned by its policy"):
            await policed.set("drafter", 1)

    asyncio.run(scenario())


async def test_a_fresh_router_reads_the_registry_before_its_first_pick():
    """Hosted pools have no static replicas: a router's first request must not find them empty because the
    discovery loop has not polled yet (ReplicaSet.first_registry_read, awaited by the Caller)."""
    from tests.unit.test_replicas import FakeDiscovery, fake_set, reg

    d = FakeDiscovery()
    d.regs = [reg("drafter", "w1:1")]
    rs, _ = fake_set({"drafter": []}, discovery=d, health_interval_s=None)
    assert rs.candidates("drafter") == []
    await rs.first_registry_read()
    assert [r.address for r in rs.candidates("drafter")] == ["w1:1"]
    d.regs = []
    await rs.first_registry_read()  # once only: later changes are the discovery loop's
    assert len(rs.pool("drafter")) == 1
