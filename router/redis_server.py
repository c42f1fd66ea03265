"""A dedicated, real `redis-server` process for the prefix cache (and test fixtures).

    with RedisServer(port=6390, data_dir="/tmp/trkv", maxmemory_bytes=512 << 20, password=secret) as r:
        r.url       # "redis://127.0.0.1:6390/0": never carries the password
        r.client()  # an authenticated client

Binds 127.0.0.1 only, no persistence (a cache: RDB/AOF off), `maxmemory` + an eviction
policy (default allkeys-lru: a full cache evicts the least recently used blocks instead of
refusing writes), its own working dir. With `password`, `requirepass` is set; with `tls`
(a `RedisTLS`: server certificate, key, CA), the port speaks only TLS. The configuration,
password included, is written to redis-server's stdin (`redis-server -`), never into its
argv, where every local user could read it in /proc/<pid>/cmdline or `ps`.
`start` waits for PING; `stop` sends SIGTERM, then SIGKILL after `timeout_s`, to the
process it started (and only that one).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

POLICIES = ("allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu", "allkeys-random", "volatile-random", "volatile-ttl", "noeviction")


@dataclass(frozen=True)
class RedisTLS:
    """Certificate files of a TLS Redis: the server's certificate and key, and the CA that signed it."""

    cert_file: str
    key_file: str
    ca_file: str
    auth_clients: bool = False
    """Also require clients to present a certificate signed by `ca_file`."""


def self_signed_tls(directory: str | Path, days: int = 365) -> RedisTLS:
    """A private CA and a server certificate for 127.0.0.1 / localhost, made with the `openssl` CLI.

    For a Redis that `thinkroute serve` starts with `redis.tls: true` and no certificate files,
    and for tests. Keys are written 0600; the CA key stays in `directory` (it signs nothing else).
    """
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("`openssl` not found on PATH: install it, or set redis.tls_cert_file/tls_key_file/"
                                "tls_ca_file to existing certificate files")
    ca_key, ca, key, csr, crt, ext = (d / n for n in ("ca.key", "ca.crt", "redis.key", "redis.csr", "redis.crt", "san.cnf"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run([exe, *args], check=True, capture_output=True, umask=0o077)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", str(days),
        "-subj", "/CN=thinkroute-redis-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt),
        "-days", str(days), "-extfile", str(ext))
    for f in (ca_key, key):
        f.chmod(0o600)
    return RedisTLS(cert_file=str(crt), key_file=str(key), ca_file=str(ca))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quote(value: str) -> str:
    """A redis.conf argument: double-quoted, with backslashes and quotes escaped."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("Redis config values must not contain newlines or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    def __init__(self, port: int, data_dir: str | Path, maxmemory_bytes: int, policy: str = "allkeys-lru",
                 password: str | None = None, binary: str = "redis-server", tls: RedisTLS | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown Redis eviction policy {policy!r}; use one of {list(POLICIES)}")
        if maxmemory_bytes <= 0:
            raise ValueError(f"maxmemory_bytes must be > 0 (a bounded cache), got {maxmemory_bytes}")
        exe = shutil.which(binary)
        if exe is None:
            raise FileNotFoundError(f"{binary!r} not found on PATH; install it with `apt-get install -y redis-server`")
        self.binary = exe
        self.port = port
        self.data_dir = Path(data_dir).resolve()  # redis-server resolves paths against its own cwd
        self.maxmemory_bytes = maxmemory_bytes
        self.policy = policy
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL, without credentials (clients take the password separately)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        """A client authenticated with the server's password (and its CA, under TLS)."""
        opts: dict = dict(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        if self.tls:
            opts.update(ssl=True, ssl_ca_certs=self.tls.ca_file, ssl_cert_reqs="required")
        opts.update(kwargs)
        return redis.Redis(**opts)

    def config_text(self) -> str:
        """The redis.conf the server starts with (holds the password: never log or write it world-readable)."""
        lines = [("bind", "127.0.0.1"), ("dir", str(self.data_dir)), ("save", ""), ("appendonly", "no"),
                 ("daemonize", "no"), ("maxmemory", str(self.maxmemory_bytes)), ("maxmemory-policy", self.policy),
                 ("logfile", str(self.data_dir / "redis.log")), ("protected-mode", "yes")]
        if self.tls:
            lines += [("port", "0"), ("tls-port", str(self.port)), ("tls-cert-file", self.tls.cert_file),
                      ("tls-key-file", self.tls.key_file), ("tls-ca-cert-file", self.tls.ca_file),
                      ("tls-auth-clients", "yes" if self.tls.auth_clients else "no")]
        else:
            lines.append(("port", str(self.port)))
        if self.password:
            lines.append(("requirepass", self.password))
        return "".join(f"{k} {_quote(v)}\n" for k, v in lines)

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            self.proc.stdin.write(self.config_text().encode())
        finally:
            self.proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        c = self.client()
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.data_dir / "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}: {err}{tail}")
            try:
                if c.ping():
                    return self
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING within {timeout_s} s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()  # SIGTERM: redis-server exits cleanly (persistence is off: nothing to save)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
