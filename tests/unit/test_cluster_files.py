"""The cluster files parse and point at things that exist in this code base."""
from pathlib import Path

import yaml

from router.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_serve_config_names_real_entry_points():
    cfg = yaml.safe_load((CLUSTER / "serve_config.yaml").read_text())
    app = cfg["applications"][0]
    module, fn = app["import_path"].split(":")
    mod = __import__(module, fromlist=[fn])
    assert callable(getattr(mod, fn))
    servicer = cfg["grpc_options"]["grpc_servicer_functions"][0]
    module, _, fn = servicer.rpartition(".")
    assert callable(getattr(__import__(module, fromlist=[fn]), fn))


def test_serve_configs_list_the_apps_grpc_servicers():
    """serve_config.yaml and the RayService's serveConfigV2 serve the Cluster service beside the Router, as
    `thinkroute serve` does (router.serve_app.GRPC_SERVICERS)."""
    from router.serve_app import GRPC_SERVICERS

    [rs] = [x for x in docs("rayservice.yaml") if x["kind"] == "RayService"]
    for cfg in (yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()), yaml.safe_load(rs["spec"]["serveConfigV2"])):
        assert cfg["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICERS


def test_cluster_thinkroute_config_is_valid_and_follows_the_worker_registry():
    c = load_config(CLUSTER / "thinkroute-cluster.yaml")
    assert all(p.replicas == 0 for p in c.models.values())
    assert c.router.discovery.enabled and c.router.discovery.url == c.redis.url
    assert c.router.health_interval_s  # hung pods leave traffic


def docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def test_worker_services_are_headless_and_pods_register_their_own_address():
    d = docs("workers.yaml")
    services = [x for x in d if x["kind"] == "Service"]
    deployments = [x for x in d if x["kind"] == "Deployment"]
    assert services and all(s["spec"].get("clusterIP") == "None" for s in services)
    pools = set(load_config(CLUSTER / "thinkroute-cluster.yaml").models)
    assert {x["spec"]["template"]["metadata"]["labels"]["model"] for x in deployments} == pools
    for dep in deployments:
        [c] = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        for secret in ("THINKROUTE_REDIS_PASSWORD", "THINKROUTE_KV_MAC_KEY"):
            assert "secretKeyRef" in env[secret]["valueFrom"]  # from a Secret, not a literal
        assert "--config" in c["args"]


def test_worker_configs_are_valid_worker_configs_with_the_kv_connector_and_registration(tmp_path):
    from router.commands import worker as worker_cmd

    [cm] = [x for x in docs("workers.yaml") if x["kind"] == "ConfigMap"]
    pools = set(load_config(CLUSTER / "thinkroute-cluster.yaml").models)
    assert {Path(k).stem for k in cm["data"]} == pools
    for name, text in cm["data"].items():
        f = tmp_path / name
        f.write_text(text)
        args = worker_cmd_args("--config", str(f))
        cfg, reg, kv_url = worker_cmd.load_worker_config(str(f), args)
        assert reg is not None and reg.pool == Path(name).stem and cfg.kv_connector == "redis" and kv_url
        resolved = worker_cmd._resolve_kv_connector(cfg, kv_url, "pod-0")
        assert resolved.kv_connector["kv_connector"] == "RedisKVConnector"


def worker_cmd_args(*argv):
    import argparse

    from router.commands import worker as worker_cmd

    p = argparse.ArgumentParser()
    worker_cmd.register(p.add_subparsers())
    return p.parse_args(["worker", *argv])


def test_redis_requires_auth_and_its_password_never_reaches_argv_or_the_repository():
    d = docs("redis.yaml")
    [dep] = [x for x in d if x["kind"] == "Deployment"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
    script = " ".join(c["args"])
    assert "requirepass" in script and "printf" in script and "--requirepass" not in script
    assert not [x for x in d if x["kind"] == "Secret"]  # created by the operator, never committed
    [svc] = [x for x in d if x["kind"] == "Service"]
    assert svc["metadata"]["name"] == "thinkroute-redis"
    conf = [x for x in d if x["kind"] == "ConfigMap"][0]["data"]["redis.conf"]
    assert "maxmemory-policy allkeys-lru" in conf and "requirepass" not in conf


def test_router_pods_get_the_redis_password_from_the_secret():
    [rs] = [x for x in docs("rayservice.yaml") if x["kind"] == "RayService"]
    spec = rs["spec"]["rayClusterConfig"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + \
        [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        assert "secretKeyRef" in env["THINKROUTE_REDIS_PASSWORD"]["valueFrom"]


def test_manifests_parse():
    for name in ("rayservice.yaml", "workers.yaml", "redis.yaml"):
        docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
        assert docs and all("kind" in d for d in docs)
