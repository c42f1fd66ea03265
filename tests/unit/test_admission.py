import asyncio

import pytest

from workers.errors import QueueFull
from workers.server import Admission


async def test_admission_bounds_running_and_queued():
    adm = Admission(concurrency=1, max_queue=1)
    release = asyncio.Event()
    started = []

    async def job(i):
        async with adm.slot():
            started.append(i)
            await release.wait()

    t1 = asyncio.create_task(job(1))
    await asyncio.sleep(0)
    t2 = asyncio.create_task(job(2))
    await asyncio.sleep(0)
    assert (adm.running, adm.queued) == (1, 1)
    with pytest.raises(QueueFull, match="queue is full"):
        async with adm.slot():
            pass
    release.set()
    await asyncio.gather(t1, t2)
    assert started == [1, 2] and (adm.running, adm.queued) == (0, 0)


# -- the router's admission step (router/admission.py): one for both ingresses ---------------------
import logging

from router.admission import Admission as RouterAdmission, Caller, check_caps, peer_host
from router.config import load_config
from router.errors import (InternalError, InvalidRoute, PermissionDenied, RateLimited, Unauthenticated,
                           internal_error)
from router.planner import DialStore
from router.tenants import digest
from router.types import RouteQuery
from workers.types import ChatMessage

TENANTS = {"auth.tenants": {
    "acme": {"api_key_sha256": digest("acme-key"), "dial": 0.2},
    "tight": {"api_key_sha256": digest("tight-key"), "tokens_per_second": 1.0, "token_burst": 100,
              "max_concurrent": 1, "max_tokens": 64},
}}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def admission(overrides=None, admin_token="admin-tok", clock=None) -> RouterAdmission:
    config = load_config(overrides={**TENANTS, **(overrides or {})})
    digests = {digest("acme-key"): "acme", digest("tight-key"): "tight"}
    return RouterAdmission(config, digests, admin_token, clock=clock or Clock())


REMOTE = "10.1.2.3"


def test_grpc_caller_without_a_key_is_unauthenticated_when_keys_are_configured():
    adm = admission()
    for caller in (Caller(peer_host=REMOTE), Caller(peer_host="127.0.0.1"), Caller(authorization="Bearer nope")):
        with pytest.raises(Unauthenticated):
            adm.admit(caller, RouteQuery(query="hi"))
    with pytest.raises(Unauthenticated, match="characters"):
        adm.authenticate(Caller(authorization="Bearer " + "k" * 5000))


def test_the_tenant_comes_from_the_credential_not_from_the_request():
    adm = admission()
    q = RouteQuery(query="hi", tenant="acme")                   # borrowing acme's dial and limits
    with adm.admit(Caller(authorization="Bearer tight-key", peer_host=REMOTE), q):
        pass
    assert q.tenant == "tight"
    q = RouteQuery(query="hi", tenant="acme")
    with adm.admit(Caller(authorization="Bearer acme-key", peer_host=REMOTE), q):
        pass
    assert q.tenant == "acme"


def test_token_rate_limit_reserves_settles_and_answers_retry_after():
    clock = Clock()
    adm = admission(clock=clock)
    caller = Caller(authorization="Bearer tight-key", peer_host=REMOTE)
    q = RouteQuery(query="What is 2 + 3?", max_tokens=60)
    with adm.admit(caller, q) as ticket:
        assert 60 < ticket.reserved <= 100
        ticket.settle({"usage": [{"prompt_tokens": 30, "generated_tokens": 60}]})
    with pytest.raises(RateLimited, match="rate limit in tokens") as err:
        adm.admit(caller, RouteQuery(query="What is 2 + 3?", max_tokens=60))
    assert err.value.retry_after_s >= 60 and err.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert err.value.http_status == 429
    clock.t += err.value.retry_after_s
    with adm.admit(caller, RouteQuery(query="What is 2 + 3?", max_tokens=60)):
        pass


def test_refused_requests_get_their_reservation_back_and_quotas_hold():
    adm = admission()
    caller = Caller(authorization="Bearer tight-key", peer_host=REMOTE)
    with pytest.raises(InvalidRoute, match="at most 64"):
        adm.admit(caller, RouteQuery(query="hi", max_tokens=65))
    q = RouteQuery(query="hi", max_tokens=0)
    first = adm.admit(caller, q)
    assert q.max_tokens == 64                                   # the tenant's cap replaces the larger default
    with pytest.raises(RateLimited, match="max_concurrent"):
        adm.admit(caller, RouteQuery(query="hi", max_tokens=8))
    first.release(InvalidRoute("bad"))
    assert adm.limits.bucket("tight", "tokens").tokens == pytest.approx(100)
    with adm.admit(caller, RouteQuery(query="hi", max_tokens=8)):
        pass


def test_admin_token_only_over_tls_or_from_this_host():
    adm = admission()
    token = "admin-tok"
    adm.check_admin(Caller(peer_host="127.0.0.1", admin_token=token))
    adm.check_admin(Caller(peer_host="::1", admin_token=token))
    adm.check_admin(Caller(peer_host=REMOTE, admin_token=token, tls=True))
    with pytest.raises(PermissionDenied, match="without TLS"):
        adm.check_admin(Caller(peer_host=REMOTE, admin_token=token))
    with pytest.raises(PermissionDenied, match="x-thinkroute-admin-token"):
        adm.check_admin(Caller(peer_host="127.0.0.1", admin_token="wrong"))
    with pytest.raises(PermissionDenied, match="no admin token"):
        admission(admin_token=None).check_admin(Caller(peer_host="127.0.0.1", admin_token=token))
    upstream = admission({"tls.ingress_terminated_upstream": True})
    upstream.check_admin(Caller(peer_host=REMOTE, admin_token=token))


def test_reading_another_tenants_dial_needs_the_admin_token():
    adm = admission()
    acme = Caller(authorization="Bearer acme-key", peer_host="127.0.0.1")
    assert adm.may_read_tenant(acme, "acme") == "acme"
    with pytest.raises(PermissionDenied, match="not yours"):
        adm.may_read_tenant(acme, "tight")
    assert adm.may_read_tenant(Caller(authorization="Bearer acme-key", peer_host="127.0.0.1",
                                      admin_token="admin-tok"), "tight") == "acme"


@pytest.mark.parametrize("query,field", [
    (RouteQuery(messages=[ChatMessage("user", "x")] * 257), "messages has 257 entries"),
    (RouteQuery(messages=[ChatMessage("user", "x" * 100_001)]), "messages[0].content"),
    (RouteQuery(query="x" * 100_001), "query has"),
    (RouteQuery(messages=[ChatMessage("user", "x" * 90_000)] * 5), "together"),
    (RouteQuery(query="hi", stop=["a"] * 9), "stop has 9 entries"),
    (RouteQuery(query="hi", stop=["a", "b" * 257]), "stop[1]"),
    (RouteQuery(query="hi", stop=[""]), "stop[0]"),
    (RouteQuery(query="hi", options={f"k{i}": 1 for i in range(33)}), "strategy_options"),
    (RouteQuery(query="hi", options={"k": "v" * 9000}), "bytes as JSON"),
    (RouteQuery(query="hi", request_id="r" * 129), "request_id"),
    (RouteQuery(query="hi", tenant="t" * 129), "tenant"),
    (RouteQuery(query="hi", strategy="s" * 129), "strategy"),
], ids=["messages", "message-chars", "query-chars", "total-chars", "stops", "stop-chars", "empty-stop", "options",
        "options-bytes", "request-id", "tenant", "strategy"])
def test_request_caps_name_the_field(query, field):
    with pytest.raises(InvalidRoute) as err:
        check_caps(query, load_config().limits)
    assert field in str(err.value)


def test_peer_host_parses_grpc_peers():
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("ipv6:[::ffff:127.0.0.1]:5000") == "127.0.0.1"
    from router.tenants import is_loopback
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1") and not is_loopback("::ffff:10.0.0.1")
    assert peer_host("unix:/tmp/s") == "localhost"
    assert peer_host("") is None and peer_host("weird") is None


def test_internal_error_carries_only_an_id_and_logs_the_details(caplog):
    try:
        raise KeyError("secret-detail")
    except KeyError as e:
        with caplog.at_level(logging.ERROR):
            err = internal_error(e, logging.getLogger("t"), "here")
    assert isinstance(err, InternalError) and "secret-detail" not in str(err) and err.error_id in str(err)
    assert err.error_id in caplog.text and "secret-detail" in caplog.text


def test_dial_store_versions_and_follows_a_new_owner():
    owner = DialStore(0.5, {}, epoch="a")
    copy = DialStore(0.5, {}, epoch="")
    assert copy.apply(owner.snapshot())
    owner.set(0.3, "acme")
    assert copy.apply(owner.snapshot()) and copy.get("acme") == 0.3 and copy.version == 1
    assert not copy.apply({**owner.snapshot(), "version": 0})
    restarted = DialStore(0.5, {}, epoch="b")                   # the owner came back with the configured dials
    assert copy.apply(restarted.snapshot()) and copy.get("acme") == 0.5


def test_legacy_http_tenants_are_read_as_auth():
    c = load_config(overrides={"http.tenants": {"a": {"api_key_sha256": digest("k")}}, "http.anonymous_access": "off"})
    assert set(c.auth.tenants) == {"a"} and c.auth.anonymous_access == "off"
    with pytest.raises(SystemExit, match="keep auth.tenants only"):
        load_config(overrides={"http.tenants": {}, "auth.tenants": {}})


class FakeGrpcContext:
    """What Ray Serve's gRPC proxy hands a replica method (RayServegRPCContext): metadata in, status out."""

    def __init__(self, metadata=(), peer="ipv4:127.0.0.1:40000") -> None:
        self.metadata, self._peer = list(metadata), peer
        self.code = self.details = None
        self.trailers = []

    def invocation_metadata(self):
        return self.metadata

    def peer(self):
        return self._peer

    def auth_context(self):
        return {}

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, md):
        self.trailers = list(md)


async def _ingress():
    from router.serve_app import RouterIngress

    ing = object.__new__(RouterIngress)
    await RouterIngress.__init__(ing, load_config().model_dump(mode="json"),
                                 {"smollm2-135m": ["127.0.0.1:1"], "gemma3-270m": ["127.0.0.1:2"]}, None)
    return ing


async def test_grpc_internal_error_answers_with_the_id_only(caplog):
    import grpc

    from thinkroute.v1 import router_pb2 as rpb

    ing = await _ingress()

    async def broken(query, emit=None):
        raise RuntimeError("secret-internal-detail /etc/passwd")

    ing.core.route = broken
    ctx = FakeGrpcContext()
    with caplog.at_level(logging.ERROR), pytest.raises(InternalError):
        await ing.Generate(rpb.RouteRequest(query="hi"), ctx)
    assert ctx.code == grpc.StatusCode.INTERNAL and "secret" not in ctx.details
    error_id = ctx.details.split()[2].rstrip(":")
    assert error_id in caplog.text and "secret-internal-detail" in caplog.text
    ctx = FakeGrpcContext()
    with pytest.raises(InternalError):
        async for _ in ing.GenerateStream(rpb.RouteRequest(query="hi"), ctx):
            pass
    assert ctx.code == grpc.StatusCode.INTERNAL and "secret" not in ctx.details


async def test_http_internal_error_answers_with_the_id_only(caplog):
    from starlette.testclient import TestClient

    from router.http_api import build_http_app

    ing = await _ingress()

    async def broken(query, emit=None):
        raise RuntimeError("secret-internal-detail")

    ing.core.route = broken
    client = TestClient(build_http_app(ing.http), client=("127.0.0.1", 5000))
    with caplog.at_level(logging.ERROR):
        resp = client.post("/v1/chat/completions", json={"model": "smollm2-135m",
                                                         "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 500 and "secret" not in resp.text
    assert resp.json()["error"]["code"] == "internal_error" and "internal error " in resp.json()["error"]["message"]
    assert "secret-internal-detail" in caplog.text
