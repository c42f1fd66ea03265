"""cluster/rayservice.yaml against the KubeRay RayService CRD's schema (offline: a trimmed copy of its
openAPIV3Schema ships in cluster/schema/), and its Serve config against this code base."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SCHEMA = json.loads((CLUSTER / "schema" / "rayservice.ray.io_v1.trimmed.json").read_text())


def rayservice() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()) if d]
    (svc,) = [d for d in docs if d.get("kind") == "RayService"]
    return svc


def test_rayservice_validates_against_the_crd_schema():
    jsonschema.validate(rayservice(), SCHEMA)


@pytest.mark.parametrize("mutate, needle", [
    (lambda s: s["spec"]["rayClusterConfig"].pop("headGroupSpec"), "headGroupSpec"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas="four"), "four"),
    (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0"),
    (lambda s: s["spec"].update(serveConfig={}), "serveConfig"),
])
def test_the_schema_catches_what_the_api_server_would_refuse(mutate, needle):
    bad = copy.deepcopy(rayservice())
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError, match=needle):
        jsonschema.validate(bad, SCHEMA)


def test_serve_config_v2_is_a_serve_config_with_real_entry_points():
    serve_cfg = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    for fn_path in serve_cfg["grpc_options"]["grpc_servicer_functions"]:
        module, _, fn = fn_path.rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[fn]), fn))
    app = serve_cfg["applications"][0]
    module, fn = app["import_path"].split(":")
    assert callable(getattr(__import__(module, fromlist=[fn]), fn))
