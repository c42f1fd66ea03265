"""Autoscaling signals end to end: a real worker's Prometheus /metrics, the router's /metrics over Ray Serve's
HTTP proxy (both parsed with prometheus_client's parser), and thinkroute.v1.Cluster over Ray Serve's gRPC proxy:
WatchPoolStats streams the pool's signals, SetReplicas starts a second real worker process that joins the
pool and takes traffic, and scales it away again. One hf SmolLM2 worker of its own plus the one the scaler
starts (hf: they load in seconds); no Redis. Marked slow: about 100 s on 2 cores (2026-12-02: 102 s, of which
Ray/worker start-up 32 s and teardown 27 s); `ops/test.sh tests` runs it.
"""
from __future__ import annotations

import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from thinkroute.v1 import cluster_pb2 as cpb
from thinkroute.v1 import cluster_pb2_grpc as cpb_grpc
from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import free_port, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_TOKEN = "test-admin-token-cluster-not-a-secret"
POOL = "smollm2-135m"
MD = [("application", "thinkroute")]


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    port = free_port()
    w = start_worker(POOL, "hf", tmp_path_factory.mktemp("cluster"), "--metrics-port", str(port), "--max-queue", "8")
    w.wait_ready()
    w.metrics_port = port
    yield w
    w.stop(timeout=30)


@pytest.fixture(scope="module")
def stack(worker, tmp_path_factory):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import Config
    from router.serve_app import GRPC_SERVICERS, build_app

    config = Config.model_validate({
        "models": {POOL: {"backend": "hf", "replicas": 0, "addresses": [worker.address], "max_queue": 8}},
        "router": {"default_model": POOL, "roles": {"small": POOL, "large": POOL}, "scorers": [{"name": "load"}],
                   "request_timeout_s": 120, "health_interval_s": 1.0},
        "redis": {"enabled": False},
        "autoscale": {"pools": {POOL: {"capacity_tokens_per_s": 15.0, "max_replicas": 3}}},
        "run_dir": str(tmp_path_factory.mktemp("cluster-run")),
    })
    grpc_port, http_port = free_port(), free_port()
    os.environ[config.serve.admin_token_env] = ADMIN_TOKEN
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    channel = None
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                    grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICERS))
        serve.run(build_app(config, {POOL: [worker.address]}), name="thinkroute", route_prefix="/")
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        yield rpb_grpc.RouterStub(channel), cpb_grpc.ClusterStub(channel), f"http://127.0.0.1:{http_port}"
    finally:
        if channel is not None:
            channel.close()
        serve.shutdown()  # the scaler's replica goes with it; its workers get SIGTERM with their parent
        ray.shutdown()
        os.environ.pop(config.serve.admin_token_env, None)


def ask(router, n: int = 1) -> list[rpb.RouteResponse]:
    def one(i: int) -> rpb.RouteResponse:
        return router.Generate(rpb.RouteRequest(query=f"What is {i} + {i}?", max_tokens=8), metadata=MD, timeout=120)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(one, range(n)))


def watch_until(cluster, pred, timeout_s: float) -> cpb.PoolSignals:
    """Read WatchPoolStats (0.5 s apart) until `pred(pool signals)` holds; the stream is cancelled after."""
    stream = cluster.WatchPoolStats(cpb.WatchPoolStatsRequest(pools=[POOL], interval_s=0.5), metadata=MD,
                                    timeout=timeout_s)
    seen = None
    try:
        for msg in stream:
            seen = msg.pools[0]
            if pred(seen):
                return seen
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        stream.cancel()
    raise AssertionError(f"condition not met within {timeout_s} s; last signals: {seen}")


def test_worker_and_router_metrics_parse_with_prometheus_parser(stack, worker):
    router, _, http = stack
    ask(router, 3)
    w = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
    label = (("model_name", POOL),)
    assert w["vllm:num_requests_waiting"][label] == 0 and w["vllm:num_requests_running"][label] == 0
    assert label in w["vllm:kv_cache_usage_perc"]
    assert w["vllm:time_to_first_token_seconds_count"][label] >= 3
    assert w["vllm:inter_token_latency_seconds_count"][label] >= 1
    assert w["vllm:prompt_tokens_total"][label] > 0 and w["vllm:generation_tokens_total"][label] >= 3
    assert w["vllm:prefix_cache_queries_total"][label] == w["vllm:prompt_tokens_total"][label]
    r = scrape(f"{http}/metrics")
    plans = r["thinkroute_plans_total"]
    assert sum(plans.values()) >= 3 and (("plan", f"direct:{POOL}"), ("strategy", "direct")) in plans
    assert r["thinkroute_planning_seconds_count"][()] >= 3
    assert r["thinkroute_dial"][()] == 0.5
    assert r["thinkroute_pool_demand_tokens_per_second"][(("pool", POOL),)] > 0


def test_watch_pool_stats_streams_signals_and_set_replicas_scales_the_pool(stack, worker):
    router, cluster, _ = stack
    ask(router, 2)
    sig = watch_until(cluster, lambda s: s.healthy_replicas == 1 and s.ttft_p95_ms > 0, 30)
    assert sig.replicas == 1 and sig.plans_per_s > 0 and sig.demand_tokens_per_s > 0
    assert sig.generated_tokens_per_s > 0 and sig.itl_p95_ms > 0 and sig.desired_replicas >= 1

    with pytest.raises(grpc.RpcError) as e:  # admin only
        cluster.SetReplicas(cpb.SetReplicasRequest(pool=POOL, replicas=2), metadata=MD, timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = MD + [("x-thinkroute-admin-token", ADMIN_TOKEN)]
    with pytest.raises(grpc.RpcError) as e:
        cluster.SetReplicas(cpb.SetReplicasRequest(pool=POOL, replicas=9), metadata=admin, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_replicas" in e.value.details()

    t0 = time.monotonic()
    resp = cluster.SetReplicas(cpb.SetReplicasRequest(pool=POOL, replicas=2), metadata=admin, timeout=30)
    assert resp.target == 2 and resp.static_replicas == 1 and len(resp.started) == 1
    assert resp.how == "local worker processes"
    started = resp.started[0]
    sig = watch_until(cluster, lambda s: s.replicas == 2 and s.healthy_replicas == 2, 180)
    assert sig.target_replicas == 2
    joined_s = time.monotonic() - t0
    replicas = {c.replica for r in ask(router, 4) for c in r.trace.calls}
    assert started in replicas, f"the new worker took no traffic ({replicas}); joined after {joined_s:.0f} s"

    desired = cluster.GetDesiredReplicas(cpb.ClusterStatsRequest(pools=[POOL]), metadata=MD, timeout=30).pools[0]
    assert desired.pool == POOL and desired.current == 2 and desired.reason and desired.capacity_tokens_per_s == 15.0

    resp = cluster.SetReplicas(cpb.SetReplicasRequest(pool=POOL, replicas=1), metadata=admin, timeout=30)
    assert resp.target == 1 and not resp.started
    watch_until(cluster, lambda s: s.replicas == 1, 30)
    assert {c.replica for r in ask(router, 2) for c in r.trace.calls} == {worker.address}
