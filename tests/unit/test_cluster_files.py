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


def test_cluster_thinkroute_config_is_valid():
    c = load_config(CLUSTER / "thinkroute-cluster.yaml")
    assert all(p.replicas == 0 and p.addresses for p in c.models.values())


def test_manifests_parse():
    for name in ("rayservice.yaml", "workers.yaml"):
        docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
        assert docs and all("kind" in d for d in docs)
