"""Worker registry records (workers/registration.py) and `thinkroute worker --config` (flags override the file)."""
from __future__ import annotations

import argparse
import json

import pytest

from router.commands import worker as worker_cmd
from workers.registration import (REGISTRY_PREFIX, Registration, RegistrationConfig, advertised_address,
                                  parse_registration)


def test_a_registration_round_trips_and_keys_by_pool_and_replica():
    r = Registration(pool="smollm2-135m", model_id="smollm2-135m", address="10.0.0.7:50051", replica_id="pod-7",
                     capacity=32, heartbeat_s=2.0)
    assert parse_registration(r.to_json()) == r
    assert r.key == f"{REGISTRY_PREFIX}smollm2-135m:pod-7"


@pytest.mark.parametrize("value", [
    b"not json", b"{}", json.dumps({"pool": "m", "model_id": "m", "address": "no-port", "replica_id": "r"}),
    json.dumps({"pool": "m", "model_id": "m", "address": "h:99999", "replica_id": "r"}),
    json.dumps({"pool": "../x", "model_id": "m", "address": "h:1", "replica_id": "r"}),
    json.dumps({"pool": "m", "model_id": "m", "address": "h:1; rm -rf /", "replica_id": "r"}),
    b"x" * 5000,
])
def test_malformed_registry_values_are_ignored(value):
    assert parse_registration(value) is None


def test_capacity_is_bounded():
    v = json.dumps({"pool": "m", "model_id": "m", "address": "h:1", "replica_id": "r", "capacity": 10**9})
    assert parse_registration(v).capacity == 1 << 16


def test_registration_config_refuses_a_password_in_the_url_and_bad_names():
    with pytest.raises(ValueError, match="password"):
        RegistrationConfig(url="redis://:secret@h:6379/0")
    with pytest.raises(ValueError, match="redis://"):
        RegistrationConfig(url="http://h:1")
    with pytest.raises(ValueError, match="host:port"):
        RegistrationConfig(url="redis://h:6379/0", advertise="nope")
    c = RegistrationConfig(url="redis://h:6379/0", heartbeat_s=2.0)
    assert c.ttl_s == 6


def test_advertised_address_replaces_a_wildcard_bind(monkeypatch):
    assert advertised_address("127.0.0.1:5000") == "127.0.0.1:5000"
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    assert advertised_address("0.0.0.0:5000") == "10.1.2.3:5000"


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    worker_cmd.register(sub)
    return p.parse_args(["worker", *argv])


def test_config_file_is_read_and_explicit_flags_override_it(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("model: smollm2-135m\nmax_num_seqs: 8\nmax_model_len: 1024\nreplicas: 2\n"
                 "registration: {url: 'redis://r:6379/0', heartbeat_s: 1.5}\nkv_redis_url: redis://kv:6379/0\n")
    args = parse("--config", str(f), "--max-num-seqs", "4")
    cfg, reg, kv_url = worker_cmd.load_worker_config(str(f), args)
    assert (cfg.model, cfg.max_num_seqs, cfg.max_model_len) == ("smollm2-135m", 4, 1024)
    assert cfg.device == "cpu"  # not given anywhere: the engine default, not a flag default
    assert reg.url == "redis://r:6379/0" and reg.heartbeat_s == 1.5 and kv_url == "redis://kv:6379/0"
    merged = worker_cmd._registration(parse("--config", str(f), "--pool", "drafter"), reg)
    assert merged.pool == "drafter" and merged.heartbeat_s == 1.5


def test_a_json_engine_config_like_the_launcher_writes_is_accepted(tmp_path):
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"model": "gemma3-270m", "backend": "hf", "max_queue": 3}))
    cfg, reg, _ = worker_cmd.load_worker_config(str(f), parse("--config", str(f)))
    assert (cfg.model, cfg.backend, cfg.max_queue, reg) == ("gemma3-270m", "hf", 3, None)


def test_bad_config_names_the_field(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("model: m\nmax_num_seqs: 0\n")
    with pytest.raises(ValueError, match="max_num_seqs"):
        worker_cmd.load_worker_config(str(f), parse("--config", str(f)))


def test_kv_connector_redis_is_resolved_on_the_given_redis_without_secrets(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("model: smollm2-135m\nkv_connector: redis\n")
    cfg, _, _ = worker_cmd.load_worker_config(str(f), parse("--config", str(f)))
    with pytest.raises(ValueError, match="kv-redis-url"):
        worker_cmd._resolve_kv_connector(cfg, None, "r1")
    with pytest.raises(ValueError, match="password"):
        worker_cmd._resolve_kv_connector(cfg, "redis://:pw@h:1/0", "r1")
    out = worker_cmd._resolve_kv_connector(cfg, "redis://kv:6379/0", "r1")
    extra = out.kv_connector["kv_connector_extra_config"]
    assert extra["redis_url"] == "redis://kv:6379/0" and extra["replica_id"] == "r1" and extra["model_id"] == "smollm2-135m"
    assert "password" not in json.dumps(out.kv_connector).replace("password_env", "")


def test_the_routers_registry_url_falls_back_to_its_redis():
    from router.config import load_config
    from router.discovery import discovery_from_config

    assert discovery_from_config(load_config()) is None  # off by default
    d = discovery_from_config(load_config(overrides={"router.discovery.enabled": True}))
    assert d.url == "redis://127.0.0.1:6390/0" and d.password_env == "THINKROUTE_REDIS_PASSWORD"
    d = discovery_from_config(load_config(overrides={"router.discovery.enabled": True, "redis.url": "redis://r:1/0"}))
    assert d.url == "redis://r:1/0"
    d = discovery_from_config(load_config(overrides={"router.discovery.enabled": True, "router.discovery.url": "rediss://x:2/0",
                                                     "router.discovery.poll_interval_s": 0.5}))
    assert (d.url, d.poll_interval_s) == ("rediss://x:2/0", 0.5)


def test_a_pool_with_no_static_worker_is_valid_only_with_discovery():
    from router.config import load_config

    with pytest.raises(SystemExit, match="discovery"):
        load_config(overrides={"models.smollm2-135m.replicas": 0})
    c = load_config(overrides={"models.smollm2-135m.replicas": 0, "router.discovery.enabled": True})
    assert c.models["smollm2-135m"].replicas == 0
