"""Admission, TLS and the dial state end to end: real Ray Serve (two router replicas, HTTPS on the HTTP proxy,
the gRPC proxy), the session's real vLLM workers, and a real hf worker serving TLS with a CA made here."""
from __future__ import annotations

import os
import time

import grpc
import httpx
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import free_port, start_worker
from tests.tls_certs import make_ca_and_cert

pytestmark = pytest.mark.integration

ACME_KEY, TIGHT_KEY, WIDE_KEY, HTTPT_KEY = (f"test-{n}-key-not-a-secret" for n in ("acme", "tight", "wide", "httpt"))
ADMIN_TOKEN = "test-admin-token-not-a-secret"
APP = [("application", "thinkroute")]


def bearer(key: str) -> list[tuple[str, str]]:
    return APP + [("authorization", f"Bearer {key}")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_ca_and_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory, certs):
    w = start_worker("smollm2-135m", "hf", tmp_path_factory.mktemp("tlsworker"),
                     "--tls-cert-file", certs["cert"], "--tls-key-file", certs["key"]).wait_ready()
    yield w
    w.stop(timeout=30)


@pytest.fixture(scope="module")
def stack(worker_addresses, tls_worker, certs):
    """App `thinkroute` (keys, two router replicas, plaintext workers) at /; app `tlsw` (router -> worker TLS) at
    /tlsw; HTTPS on the HTTP proxy with the test CA's certificate."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    for name, key in (("ACME", ACME_KEY), ("TIGHT", TIGHT_KEY), ("WIDE", WIDE_KEY), ("HTTPT", HTTPT_KEY)):
        os.environ[f"THINKROUTE_TEST_{name}_KEY"] = key
    os.environ["THINKROUTE_ADMIN_TOKEN"] = ADMIN_TOKEN
    config = load_config(overrides={
        "router.request_timeout_s": 120,
        "serve.router_replicas": 2,
        "auth.tenants": {
            "acme": {"api_key_env": "THINKROUTE_TEST_ACME_KEY", "dial": 0.2},
            "wide": {"api_key_env": "THINKROUTE_TEST_WIDE_KEY"},
            "tight": {"api_key_env": "THINKROUTE_TEST_TIGHT_KEY", "tokens_per_second": 0.5, "token_burst": 60},
            "httpt": {"api_key_env": "THINKROUTE_TEST_HTTPT_KEY", "tokens_per_second": 0.5, "token_burst": 60},
        },
    })
    tls_config = load_config(overrides={
        "models": {"smollm2-135m": {"replicas": 0, "addresses": [tls_worker.address], "backend": "hf"}},
        "router.roles": {"small": "smollm2-135m", "large": "smollm2-135m"}, "policy": None,
        "tls.worker_ca_file": certs["ca"], "router.request_timeout_s": 120,
    })
    grpc_port, http_port = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port, ssl_certfile=certs["cert"],
                                         ssl_keyfile=certs["key"]),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    serve.run(build_app(config, worker_addresses), name="thinkroute", route_prefix="/")
    serve.run(build_app(tls_config, {"smollm2-135m": [tls_worker.address]}), name="tlsw", route_prefix="/tlsw")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield {"grpc": rpb_grpc.RouterStub(channel), "base": f"https://127.0.0.1:{http_port}", "ca": certs["ca"]}
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


def http_chat(stack, key, **body):
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1,
            "thinkroute": {"trace": True}, **body}
    return httpx.post(stack["base"] + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      verify=stack["ca"], timeout=120)


# Runs first: before it, no request of this module reached either replica over gRPC, so the replica that
# SetDial does not reach has served HTTP only.
def test_a_dial_change_reaches_every_replica_including_an_http_only_one(stack):
    admin = APP + [("x-thinkroute-admin-token", ADMIN_TOKEN)]
    assert stack["grpc"].SetDial(rpb.SetDialRequest(dial=0.35), metadata=admin, timeout=60).dial == pytest.approx(0.35)
    changed_at = time.monotonic()
    seen: dict[str, tuple[float, float]] = {}                   # replica -> (dial it planned with, when)
    deadline = changed_at + 60
    while time.monotonic() < deadline and not (len(seen) == 2 and all(d == 0.35 for d, _ in seen.values())):
        resp = http_chat(stack, WIDE_KEY)                        # over HTTPS, verified with the test CA
        assert resp.status_code == 200, resp.text
        trace = resp.json()["thinkroute_trace"]
        seen[trace["details"]["router_replica"]] = (trace["plan"]["dial"], time.monotonic() - changed_at)
    assert len(seen) == 2, f"requests reached only {list(seen)}"
    assert all(d == pytest.approx(0.35) for d, _ in seen.values()), seen


def test_https_ingress_refuses_a_client_that_does_not_trust_the_ca(stack):
    with pytest.raises(httpx.ConnectError):
        httpx.get(stack["base"] + "/health", timeout=30)
    assert httpx.get(stack["base"] + "/health", verify=stack["ca"], timeout=30).status_code == 200


def test_unauthenticated_grpc_calls_are_refused_when_keys_are_configured(stack):
    stub = stack["grpc"]
    for call, req in ((stub.Generate, rpb.RouteRequest(query="Say hi.", max_tokens=1)),
                      (stub.PoolStats, rpb.PoolStatsRequest()), (stub.GetDial, rpb.GetDialRequest())):
        for md in (APP, bearer("wrong-key")):
            with pytest.raises(grpc.RpcError) as err:
                call(req, metadata=md, timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    assert stub.Generate(rpb.RouteRequest(query="Say hi.", max_tokens=1, model="smollm2-135m"),
                         metadata=bearer(WIDE_KEY), timeout=120).text is not None
    assert stub.PoolStats(rpb.PoolStatsRequest(), metadata=bearer(WIDE_KEY), timeout=60).pools


def test_a_client_sent_tenant_cannot_borrow_another_tenants_dial(stack):
    stub = stack["grpc"]
    req = rpb.RouteRequest(query="Say hi.", max_tokens=1, model="smollm2-135m", tenant="acme")
    mine = stub.Generate(req, metadata=bearer(WIDE_KEY), timeout=120)
    assert mine.trace.plan.dial == pytest.approx(0.35)           # wide's dial (the global default), not acme's
    theirs = stub.Generate(req, metadata=bearer(ACME_KEY), timeout=120)
    assert theirs.trace.plan.dial == pytest.approx(0.2)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDial(rpb.GetDialRequest(tenant="acme"), metadata=bearer(WIDE_KEY), timeout=60)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_token_rate_limit_is_resource_exhausted_with_retry_after_over_grpc(stack):
    req = rpb.RouteRequest(query="Count from one to twenty.", max_tokens=40, model="smollm2-135m")
    refused = None
    for _ in range(4):                                           # each replica has its own bucket
        try:
            stack["grpc"].Generate(req, metadata=bearer(TIGHT_KEY), timeout=120)
        except grpc.RpcError as e:
            refused = e
            break
    assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit in tokens" in refused.details() and "retry in" in refused.details()
    trailers = dict(refused.trailing_metadata() or ())
    assert int(trailers["retry-after"]) >= 1


def test_token_rate_limit_is_429_with_retry_after_over_http(stack):
    resp = None
    for _ in range(4):
        resp = http_chat(stack, HTTPT_KEY, max_tokens=40)
        if resp.status_code != 200:
            break
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1 and resp.json()["error"]["code"] == "rate_limit_exceeded"


def test_request_caps_name_the_field_over_both_ingresses(stack):
    with pytest.raises(grpc.RpcError) as err:
        stack["grpc"].Generate(rpb.RouteRequest(query="hi", stop=["x"] * 9), metadata=bearer(WIDE_KEY), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "stop has 9 entries" in err.value.details()
    resp = http_chat(stack, WIDE_KEY, messages=[{"role": "user", "content": "x" * 100_001}])
    assert resp.status_code == 400 and "messages[0].content" in resp.json()["error"]["message"]


def test_router_to_worker_tls_round_trip(stack, tls_worker, certs):
    import asyncio

    from router.worker_client import WorkerClient, WorkerTls

    async def direct():
        secure = WorkerClient(tls_worker.address, WorkerTls.from_files(certs["ca"]))
        info = await secure.info(timeout=30)
        plain = WorkerClient(tls_worker.address)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await plain.info(timeout=10)
        await secure.close()
        await plain.close()
        return info, err.value.code()

    info, plain_code = asyncio.run(direct())
    assert info.backend == "hf" and plain_code == grpc.StatusCode.UNAVAILABLE
    resp = stack["grpc"].Generate(rpb.RouteRequest(query="Name a colour.", max_tokens=4),
                                  metadata=[("application", "tlsw")], timeout=120)
    assert resp.text and resp.trace.calls[0].replica == tls_worker.address
