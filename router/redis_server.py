"""A dedicated, real `redis-server` process for the prefix cache (and test fixtures).

    with RedisServer(port=6390, data_dir="/tmp/trkv", maxmemory_bytes=512 << 20) as r:
        r.url  # "redis://127.0.0.1:6390/0"

Binds 127.0.0.1 only, no persistence (a cache: RDB/AOF off), `maxmemory` + an eviction
policy (default allkeys-lru: a full cache evicts the least recently used blocks instead of
refusing writes), its own working dir. `start` waits for PING; `stop` sends SIGTERM, then
SIGKILL after `timeout_s`, to the process it started (and only that one).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

POLICIES = ("allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu", "allkeys-random", "volatile-random", "volatile-ttl", "noeviction")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int, data_dir: str | Path, maxmemory_bytes: int, policy: str = "allkeys-lru",
                 password: str | None = None, binary: str = "redis-server"):
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
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--maxmemory", str(self.maxmemory_bytes), "--maxmemory-policy", self.policy,
                "--logfile", str(self.data_dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
