"""Tenants: who a request is (API key -> tenant) and the token buckets that pace it.

Used by router/admission.py, the one admission step of both ingresses.

- Keys never travel or sit in memory in clear beyond the request that carries them: `key_digests`
  (called once where the app is built) turns `auth.tenants.<name>.api_key_env` / `.api_key_sha256`
  into {sha256(key): tenant}; the router replicas only ever see digests.
- `Authenticator.authenticate(authorization, client_host)` -> tenant name, or `AuthError`
  (HTTP 401 / gRPC UNAUTHENTICATED). Requests without a key follow `auth.anonymous_access`.
- `TokenBucket`: `take(n)` returns 0 when `n` may go, else the seconds until it could (the ingress
  answers 429 / RESOURCE_EXHAUSTED with that as `Retry-After`); `charge(n)` settles a difference
  afterwards (may go into debt). Buckets live in each router replica, so with
  `serve.router_replicas: N` a tenant's effective limit is up to N times larger.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from typing import Callable, Mapping

from router.config import AuthConfig

Clock = Callable[[], float]


class AuthError(Exception):
    """The request is not authenticated (HTTP 401); the message says what to send."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_digests(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{sha256(api key): tenant} from the config; raises ValueError naming a tenant whose key is missing."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, t in auth.tenants.items():
        digests = []
        if t.api_key_sha256:
            digests.append(t.api_key_sha256.lower())
        if t.api_key_env:
            key = environ.get(t.api_key_env, "")
            if not key:
                raise ValueError(f"auth.tenants.{name}.api_key_env names ${t.api_key_env}, which is not set: export "
                                 f"the tenant's API key there (or use api_key_sha256)")
            digests.append(digest(key))
        for d in digests:
            if d in out and out[d] != name:
                raise ValueError(f"auth.tenants.{name} and auth.tenants.{out[d]} have the same API key")
            out[d] = name
    return out


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as a dual-stack [::] listener sees IPv4
    return (mapped or addr).is_loopback


class Authenticator:
    """Maps `Authorization: Bearer <key>` to a tenant name."""

    def __init__(self, auth: AuthConfig, digests: dict[str, str]) -> None:
        self.digests = dict(digests)
        self.mode = auth.anonymous_access
        self.anonymous_tenant = auth.anonymous_tenant

    def authenticate(self, authorization: str | None, client_host: str | None) -> str:
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise AuthError("the credential must be `Bearer <api key>` (HTTP header Authorization / gRPC "
                                "metadata authorization)")
            d = digest(key.strip())
            for known, tenant in self.digests.items():
                if hmac.compare_digest(known, d):
                    return tenant
            if not self.digests and self._anonymous_ok(client_host):
                return self.anonymous_tenant  # open router: any key (clients often send a dummy one) is anonymous
            raise AuthError("invalid API key: use a key configured in auth.tenants.<name> (api_key_env or api_key_sha256)")
        if self._anonymous_ok(client_host):
            return self.anonymous_tenant
        if self.mode == "loopback" and not self.digests:
            raise AuthError("no API key was sent, and anonymous access (auth.anonymous_access: loopback) is only for "
                            f"clients on the router's own host; this client is {client_host or 'unknown'}. Configure "
                            "auth.tenants with API keys, or set auth.anonymous_access: on")
        raise AuthError("missing API key: send `Authorization: Bearer <api key>` (HTTP; the openai client's api_key) "
                        "or gRPC metadata `authorization: Bearer <api key>`")

    def _anonymous_ok(self, client_host: str | None) -> bool:
        if self.mode == "on":
            return True
        return self.mode == "loopback" and not self.digests and is_loopback(client_host)


class TokenBucket:
    """`rate` tokens per second up to `burst`; rate 0 = unlimited. Not thread-safe (one event loop)."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens: 0.0 if granted, else seconds until `n` tokens will be there (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    def charge(self, n: float) -> None:
        """Settle `n` more tokens (negative = give back, up to `burst`); the bucket may go into debt."""
        if self.rate <= 0:
            return
        self.tokens = min(self.burst, self.tokens - n)


class RateLimits:
    """One bucket per tenant and kind, made on first use from `auth.tenants.<name>` (unlimited when absent).

    kind `requests`: `requests_per_second` / `burst`; kind `tokens`: `tokens_per_second` / `token_burst`."""

    def __init__(self, auth: AuthConfig, clock: Clock = time.monotonic) -> None:
        self.auth, self.clock = auth, clock
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def bucket(self, tenant: str, kind: str = "requests") -> TokenBucket:
        b = self.buckets.get((tenant, kind))
        if b is None:
            t = self.auth.tenants.get(tenant)
            if kind == "requests":
                b = TokenBucket(t.requests_per_second if t else 0.0, t.burst if t else 1, self.clock)
            else:
                b = TokenBucket(t.tokens_per_second if t else 0.0, t.token_burst if t else 1, self.clock)
            self.buckets[(tenant, kind)] = b
        return b

    def take(self, tenant: str, n: float = 1.0, kind: str = "requests") -> float:
        return self.bucket(tenant, kind).take(n)
