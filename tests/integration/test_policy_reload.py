"""`thinkroute train` and `thinkroute policy reload` on the real stack: the embedded workers (vLLM), Ray Serve.

- train's two feature paths (the worker HiddenState RPC, the same weights in-process) give the same features
  within 2e-3 (absolute and relative), and a worker serving another model is refused, naming both models;
- a running router swaps its policy artifact under concurrent load: every request is answered exactly once,
  none fails, requests planned after the swap use the new artifact, a bad artifact is refused and the
  current one keeps serving. The module takes ~8 min on 2 cores with worker start-up: marked slow."""
from __future__ import annotations

import argparse
import os
import threading
import time

import grpc
import numpy as np
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import free_port
from tests.unit.test_train import count, write_outcomes

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # run by `ops/test.sh tests`; see the module docstring for its duration
ADMIN_TOKEN = "test-admin-token-not-a-secret"
MD = [("application", "thinkroute")]
TEXTS = ["Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
         "What is 17 * 3?", "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes. How much did she earn?"]


def _args(**kw):
    base = dict(features="local", worker=None, layers=[2, -1], pooling=["last", "mean"], max_tokens=64, uncertainty=True,
                noise_dim=8, seed=0, no_cache=True)
    return argparse.Namespace(**{**base, **kw})


def test_train_features_local_equal_worker_rpc(worker_addresses):
    from router.commands.train import build_source
    from router.config import load_config

    cfg = load_config()
    local = build_source(_args(), cfg, progress=False)
    live = build_source(_args(features="worker", worker=worker_addresses["smollm2-135m"][0]), cfg, progress=False)
    assert local.spec == live.spec and local.model_id == live.model_id == "smollm2-135m"
    np.testing.assert_allclose(live.features(TEXTS), local.features(TEXTS), rtol=2e-3, atol=2e-3)
    with pytest.raises(SystemExit, match=r"serves 'gemma3-270m' but the config's drafter .* is 'smollm2-135m'"):
        build_source(_args(features="worker", worker=worker_addresses["gemma3-270m"][0]), cfg, progress=False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from router.config import load_config
    from router.learn.fit import train_artifact
    from router.learn.outcomes import load_training_set
    from router.learn.textfeat import LengthFeatures, NoiseFeatures

    tmp = tmp_path_factory.mktemp("reload")
    ts = load_training_set([str(write_outcomes(tmp / "o.jsonl", n=60))], load_config(), count_tokens=count)
    out = {}
    for name, src in (("length", LengthFeatures()), ("noise", NoiseFeatures(8))):
        train_artifact(ts, src.features(ts.data.texts), src.spec, src.model_id, tmp / name, cv=3, progress=False,
                       bootstrap=10, plot=False)
        out[name] = str(tmp / name)
    (tmp / "bad").mkdir()
    out["bad"] = str(tmp / "bad")
    return out


@pytest.fixture(scope="module")
def stack(worker_addresses, artifacts):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    config = load_config(overrides={"policy.artifact": artifacts["length"], "router.request_timeout_s": 120,
                                    "serve.router_replicas": 2})
    grpc_port, http_port = free_port(), free_port()
    os.environ[config.serve.admin_token_env] = ADMIN_TOKEN
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    serve.run(build_app(config, worker_addresses), name="thinkroute", route_prefix="/")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield rpb_grpc.RouterStub(channel), f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


def _source(resp) -> str:
    return dict(resp.trace.plan.candidates)["predictions"]["source"]


@pytest.mark.slow
def test_reload_under_load_fails_nothing_and_answers_once(stack, artifacts):
    import httpx

    from router.commands.policy import reload_grpc

    stub, http_base, grpc_addr = stack
    results: dict[str, list] = {}
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"c{k}-{i}"
            i += 1
            try:
                t = time.monotonic()
                resp = stub.Generate(rpb.RouteRequest(request_id=rid, query=f"({rid}) What is {k} + {i}?", max_tokens=2, dial=0.0),
                                     metadata=MD, timeout=120)
                with lock:
                    results.setdefault(resp.request_id, []).append((t, time.monotonic(), _source(resp)))
            except grpc.RpcError as e:
                with lock:
                    errors.append(f"{rid}: {e.code().name} {e.details()}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    try:
        time.sleep(3)
        swaps = []
        for name in ("noise", "length", "noise"):
            got = reload_grpc(grpc_addr, artifacts[name], ADMIN_TOKEN, timeout=60)
            assert got["source"] == "probe" and got["artifact"] == artifacts[name]
            swaps.append((time.monotonic(), name))
            time.sleep(2)
        with pytest.raises(grpc.RpcError) as err:  # refused: the current policy keeps serving
            reload_grpc(grpc_addr, artifacts["bad"], ADMIN_TOKEN, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no probe" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            reload_grpc(grpc_addr, artifacts["length"], "wrong-token", timeout=60)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        r = httpx.post(http_base + "/admin/policy/reload", json={"artifact": artifacts["length"]},
                       headers={"x-thinkroute-admin-token": ADMIN_TOKEN}, timeout=60)
        assert r.status_code == 200 and r.json()["artifact"] == artifacts["length"]
        swaps.append((time.monotonic(), "length"))
        time.sleep(3)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=150)
    assert not errors, errors[:5]
    assert len(results) > 20 and all(len(v) == 1 for v in results.values())  # each request answered exactly once
    # a request sent after a swap (+1 s for the other replica's long-poll) plans with the new artifact
    last_t, last = swaps[-1]
    late = [src for rows in results.values() for (t0, _, src) in rows if t0 > last_t + 1.0]
    assert late and all(src.endswith(artifacts[last]) for src in late), late[:3]
