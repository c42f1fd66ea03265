"""Admission: the one step every request passes before the router plans it, for both ingresses.

    ingress -> Caller (credential, peer, TLS) -> Admission.admit(caller, query) -> Ticket
            -> RouterCore.route(query) -> ticket.settle(trace) -> ticket.release()

- Authenticate: HTTP `Authorization: Bearer <key>` or gRPC metadata `authorization: Bearer <key>`,
  the same keys (`auth.tenants`, see router/tenants.py). The tenant comes from the credential; a
  tenant named in the request is ignored unless it is the caller's own.
- Rate limits per tenant, in requests (`requests_per_second`/`burst`) and in model tokens
  (`tokens_per_second`/`token_burst`: the request reserves prompt estimate + max_tokens, the
  difference to its real usage is settled when it ends); quotas: requests in flight
  (`max_concurrent`), largest `max_tokens`. Over a limit: `RateLimited` (HTTP 429 / gRPC
  RESOURCE_EXHAUSTED) with a Retry-After.
- Admin RPCs (`check_admin`): the admin token, and only over TLS or from the router's own host
  (a plaintext token from another host would have crossed the network in clear).
- `check_caps(query, limits)`: bounds on every repeated or free-form field (`limits:` in the config);
  `RouterCore.validate` calls it for both ingresses.

All state (buckets, in-flight counts) is per router replica and single-threaded (one event loop).
"""
from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from router.config import Config, LimitsConfig
from router.errors import InvalidRoute, NotFound, PermissionDenied, RateLimited, Unauthenticated
from router.tenants import Authenticator, AuthError, RateLimits, is_loopback
from router.types import RouteQuery

log = logging.getLogger("thinkroute.admission")

ADMIN_METADATA = "x-thinkroute-admin-token"
#: Characters per token of the up-front prompt estimate (an over-estimate for English and code).
CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as its ingress saw it."""

    authorization: str | None = None
    """`Bearer <key>` as sent (HTTP header or gRPC metadata `authorization`), or None."""
    peer_host: str | None = None
    """The client's IP address (None when unknown)."""
    tls: bool = False
    """The client's channel to the router was TLS."""
    ingress: str = "grpc"
    """`grpc` or `http`."""
    admin_token: str | None = None
    """gRPC metadata `x-thinkroute-admin-token`, when sent."""


def peer_host(peer: str | None) -> str | None:
    """gRPC peer string -> host: `ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `::1`."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]").replace("%25", "%")
        if host.lower().startswith("::ffff:") and "." in host:
            return host[7:]  # an IPv4 client of a dual-stack [::] listener (Ray Serve's gRPC proxy)
        return host
    if kind == "unix":
        return "localhost"
    return None


def grpc_caller(grpc_context: Any) -> Caller:
    """The Caller of a gRPC method called through Ray Serve's gRPC proxy (a RayServegRPCContext)."""
    if grpc_context is None:
        return Caller(ingress="grpc")
    md: dict[str, str] = {}
    for k, v in grpc_context.invocation_metadata():
        md.setdefault(k.lower(), v if isinstance(v, str) else "")
    auth_ctx = grpc_context.auth_context() or {}
    tls = (auth_ctx.get("transport_security_type") or [b""])[0] == b"ssl"
    return Caller(authorization=md.get("authorization"), peer_host=peer_host(grpc_context.peer()), tls=tls,
                  ingress="grpc", admin_token=md.get(ADMIN_METADATA))


def http_caller(request: Any) -> Caller:
    """The Caller of a Starlette request (the HTTP ingress)."""
    return Caller(authorization=request.headers.get("authorization"),
                  peer_host=request.client.host if request.client else None,
                  tls=request.url.scheme == "https", ingress="http")


# -- request bounds --------------------------------------------------------------------------------
def _too_long(field: str, n: int, bound: int, what: str = "characters") -> InvalidRoute:
    return InvalidRoute(f"{field} has {n} {what}; at most {bound} are accepted (limits in the router config: "
                        "`limits:`); shorten it")


def check_caps(query: RouteQuery, limits: LimitsConfig) -> None:
    """Raise InvalidRoute naming the first field over its bound in `limits` (see LimitsConfig)."""
    for name in ("request_id", "tenant", "model", "strategy", "session"):
        value = getattr(query, name, None) or ""
        if len(value) > limits.max_id_chars:
            raise _too_long(name, len(value), limits.max_id_chars)
    total = len(query.query)
    if total > limits.max_message_chars:
        raise _too_long("query", total, limits.max_message_chars)
    messages = query.messages or []
    if len(messages) > limits.max_messages:
        raise _too_long("messages", len(messages), limits.max_messages, "entries")
    for i, m in enumerate(messages):
        if len(m.content) > limits.max_message_chars:
            raise _too_long(f"messages[{i}].content", len(m.content), limits.max_message_chars)
        total += len(m.content)
    if total > limits.max_total_chars:
        raise _too_long("query and messages together", total, limits.max_total_chars)
    if len(query.stop) > limits.max_stop:
        raise _too_long("stop", len(query.stop), limits.max_stop, "entries")
    for i, s in enumerate(query.stop):
        if not isinstance(s, str) or not s:
            raise InvalidRoute(f"stop[{i}] must be a non-empty string")
        if len(s) > limits.max_stop_chars:
            raise _too_long(f"stop[{i}]", len(s), limits.max_stop_chars)
    options = query.options or {}
    if len(options) > limits.max_options:
        raise _too_long("strategy_options (thinkroute.options over HTTP)", len(options), limits.max_options, "keys")
    try:
        size = len(json.dumps(options, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidRoute(f"strategy_options (thinkroute.options over HTTP) must be plain JSON values: {e}") from None
    if size > limits.max_options_bytes:
        raise _too_long("strategy_options (thinkroute.options over HTTP)", size, limits.max_options_bytes,
                        "bytes as JSON")


def prompt_estimate(query: RouteQuery) -> int:
    """An upper-bound guess of the prompt's tokens, before any tokenizer has seen it."""
    chars = len(query.query) + sum(len(m.content) + 8 for m in (query.messages or []))
    return math.ceil(chars / CHARS_PER_TOKEN) + 8


def usage_tokens(trace: dict[str, Any]) -> int:
    """Prompt + generated tokens over every model call of a routed request's trace."""
    return sum(int(u.get("prompt_tokens", 0)) + int(u.get("generated_tokens", 0)) for u in trace.get("usage", []))


# -- admission -------------------------------------------------------------------------------------
class Ticket:
    """One admitted request: its tenant and its token reservation. Use as a context manager, or call
    `release()` exactly once; `settle(trace)` first when the request ran (charges its real usage).
    A request refused by validation (InvalidRoute, NotFound) gets its reservation back."""

    def __init__(self, admission: "Admission", tenant: str, reserved: int) -> None:
        self.admission, self.tenant, self.reserved = admission, tenant, reserved
        self._settled = self._released = False

    def settle(self, trace: dict[str, Any]) -> int:
        """Charge the real token usage of `trace` against the reservation; returns the usage."""
        used = usage_tokens(trace)
        if not self._settled:
            self._settled = True
            self.admission.limits.bucket(self.tenant, "tokens").charge(used - self.reserved)
        return used

    def release(self, error: BaseException | None = None) -> None:
        if self._released:
            return
        self._released = True
        if not self._settled and isinstance(error, (InvalidRoute, NotFound)):
            self._settled = True
            self.admission.limits.bucket(self.tenant, "tokens").charge(-self.reserved)
        self.admission._leave(self.tenant)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(exc)


class Admission:
    """Authentication, tenant, rate limits and quotas of one router replica (see the module docstring).

    `digests` is {sha256(api key): tenant} (router.tenants.key_digests); `admin_token` the admin token
    (None = admin calls refused)."""

    def __init__(self, config: Config, digests: dict[str, str], admin_token: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.auth = Authenticator(config.auth, digests)
        self.limits = RateLimits(config.auth, clock)
        self.admin_token = admin_token or None
        self.in_flight: dict[str, int] = {}

    # -- who ---------------------------------------------------------------------------------------
    def authenticate(self, caller: Caller) -> str:
        """The caller's tenant; Unauthenticated (HTTP 401 / gRPC UNAUTHENTICATED) saying what to send."""
        cred = caller.authorization
        if cred is not None and len(cred) > self.config.limits.max_credential_chars:
            raise Unauthenticated(f"the authorization value has {len(cred)} characters; at most "
                                  f"{self.config.limits.max_credential_chars}")
        try:
            return self.auth.authenticate(cred, caller.peer_host)
        except AuthError as e:
            raise Unauthenticated(str(e)) from None

    def check_admin(self, caller: Caller) -> None:
        """Admin RPCs: the admin token, over TLS or from this host; PermissionDenied otherwise."""
        env = self.config.serve.admin_token_env
        if not self.admin_token:
            raise PermissionDenied(f"admin calls are refused: no admin token is set on this router (${env})")
        secure = caller.tls or self.config.tls.ingress_terminated_upstream or is_loopback(caller.peer_host)
        if not secure:
            raise PermissionDenied(
                "admin calls over a channel without TLS are accepted only from the router's own host (this caller "
                f"is {caller.peer_host or 'unknown'}): call from that host, or put a TLS-terminating proxy in front "
                "and set tls.ingress_terminated_upstream")
        given = caller.admin_token or ""
        if not secrets.compare_digest(given.encode(), self.admin_token.encode()):
            raise PermissionDenied(f"admin calls need metadata {ADMIN_METADATA!r} equal to the token in ${env}")

    def may_read_tenant(self, caller: Caller, tenant: str) -> str:
        """For GetDial: the caller's tenant; reading another tenant needs the admin token."""
        own = self.authenticate(caller)
        if tenant and tenant != own:
            try:
                self.check_admin(caller)
            except PermissionDenied:
                raise PermissionDenied(f"tenant {tenant!r} is not yours ({own!r}); reading another tenant's dial "
                                       "needs the admin token") from None
        return own

    # -- admit -------------------------------------------------------------------------------------
    def admit(self, caller: Caller, query: RouteQuery) -> Ticket:
        """Authenticate, set `query.tenant`, apply the tenant's rate limits and quotas; a Ticket, or raise
        Unauthenticated / RateLimited / InvalidRoute."""
        tenant = self.authenticate(caller)
        if query.tenant and query.tenant != tenant:
            log.info("request %s names tenant %r; its credential is tenant %r: using %r",
                     query.request_id[:64], query.tenant[:64], tenant, tenant)
        query.tenant = tenant
        cfg = self.config.auth.tenants.get(tenant)
        wait = self.limits.take(tenant, 1.0, "requests")
        if wait > 0:
            raise RateLimited(f"tenant {tenant!r} is over its rate limit in requests (auth.tenants.{tenant}.requests_per_second"
                              f"); retry in {math.ceil(wait)} s", math.ceil(wait))
        if cfg is not None and cfg.max_tokens:
            if query.max_tokens > cfg.max_tokens:
                raise InvalidRoute(f"max_tokens is {query.max_tokens}; tenant {tenant!r} may ask for at most "
                                   f"{cfg.max_tokens} (auth.tenants.{tenant}.max_tokens)")
            if query.max_tokens <= 0 and self.config.router.max_tokens > cfg.max_tokens:
                query.max_tokens = cfg.max_tokens
        if cfg is not None and cfg.max_concurrent and self.in_flight.get(tenant, 0) >= cfg.max_concurrent:
            raise RateLimited(f"tenant {tenant!r} has {cfg.max_concurrent} requests in flight, its quota "
                              f"(auth.tenants.{tenant}.max_concurrent); retry when one ends", 1)
        reserved = 0
        bucket = self.limits.bucket(tenant, "tokens")
        if bucket.rate > 0:
            want = prompt_estimate(query) + (query.max_tokens if query.max_tokens > 0 else self.config.router.max_tokens)
            reserved = int(min(want, bucket.burst))
            wait = bucket.take(reserved)
            if wait > 0:
                raise RateLimited(f"tenant {tenant!r} is over its rate limit in tokens (auth.tenants.{tenant}.tokens_per_second"
                                  f" = {bucket.rate:g}; this request reserves {reserved} tokens); retry in "
                                  f"{math.ceil(wait)} s", math.ceil(wait))
        self.in_flight[tenant] = self.in_flight.get(tenant, 0) + 1
        return Ticket(self, tenant, reserved)

    def _leave(self, tenant: str) -> None:
        n = self.in_flight.get(tenant, 0) - 1
        if n > 0:
            self.in_flight[tenant] = n
        else:
            self.in_flight.pop(tenant, None)
