"""`LocalCluster`: what `thinkroute serve` runs on one machine.

Start order: Redis (when enabled) -> one `thinkroute worker` process per model replica (on
fixed free ports, logs under run_dir) -> local Ray -> Ray Serve with the gRPC proxy and the
router application. A supervisor thread restarts a worker that exits (e.g. engine death,
exit code 3) on the same port. `stop()` reverses it: Serve, Ray, workers (SIGTERM: they drain
in-flight requests), Redis.

Secrets never travel in argv (every local user can read /proc/<pid>/cmdline): a worker's
engine config goes into a 0600 file (`--config-file`), and the Redis password and the KV
blocks' MAC key reach workers and router replicas through the environment they inherit.
When the variables that should hold them are unset, `start()` generates both (one per
deployment) and sets them in this process's environment only. Redis gets its password on
stdin (router/redis_server.py).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from router.config import Config


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it (a graceful drain) if `thinkroute serve` dies abruptly."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: rely on stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg: str) -> None:
    print(f"[thinkroute {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class WorkerProcess:
    model: str
    index: int
    port: int
    config_file: Path
    """The worker's EngineConfig as JSON, mode 0600 (argv only names the file)."""
    log_path: Path
    proc: subprocess.Popen | None = None
    tls_args: tuple[str, ...] = ()
    """--tls-cert-file/--tls-key-file (paths, from config tls.worker_*), or nothing."""
    restarts: int = 0
    started_at: float = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        ready = self.log_path.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "worker", "--model", self.model, "--port", str(self.port),
             "--config-file", str(self.config_file), "--ready-file", str(ready),
             "--replica-id", f"{self.model}-{self.index}", *self.tls_args,
             "--metrics-port", "0"],  # Prometheus /metrics on a free port, reported by the Load RPC
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()

    def ready(self) -> bool:
        return self.log_path.with_suffix(".ready").exists()

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self.reap()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s + 5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reap()

    def reap(self) -> None:
        """Kill what is left of the worker's process group (a vLLM engine core outliving its parent)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class LocalCluster:
    config: Config
    run_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    redis: object | None = None
    redis_tls_ca: str | None = None
    """CA file clients verify the launcher-started Redis with (under `redis.tls`)."""
    _stopping: bool = False
    ingress: str = ""
    """The Ray Serve ingress the router runs behind (`haproxy`, `proxy`), set by `start_router`."""

    def addresses(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: list(pool.addresses) for name, pool in self.config.models.items()}
        for w in self.workers:
            out[w.model].append(w.address)
        return out

    def ensure_secrets(self) -> None:
        """Generate the Redis password (when this launcher starts Redis) and the KV MAC key when unset.

        Both go into this process's environment only, which workers (subprocesses) and the local
        Ray's router replicas inherit; an external Redis (`redis.url`) needs its password set by
        the operator. Workers elsewhere (`addresses`) must be given the same MAC key to share blocks.
        """
        from workers.kv.secrets import read_secret

        rc = self.config.redis
        if read_secret(rc.mac_key_env) is None:
            os.environ[rc.mac_key_env] = secrets.token_urlsafe(32)
            say(f"generated the prefix cache's MAC key for this deployment (${rc.mac_key_env})")
        if not rc.url and read_secret(rc.password_env) is None:
            os.environ[rc.password_env] = secrets.token_urlsafe(32)

    def start_redis(self) -> str | None:
        rc = self.config.redis
        if not rc.enabled:
            return None
        self.ensure_secrets()
        if rc.url:
            self.redis_tls_ca = rc.tls_ca_file
            return rc.url
        try:
            from router.redis_server import RedisServer, RedisTLS, self_signed_tls
        except ModuleNotFoundError:
            say("Redis support is not installed in this build; continuing without the shared prefix cache")
            return None
        from workers.kv.secrets import read_secret

        try:
            tls = None
            if rc.tls and rc.tls_cert_file:
                tls = RedisTLS(cert_file=rc.tls_cert_file, key_file=rc.tls_key_file or "", ca_file=rc.tls_ca_file or "")
            elif rc.tls:
                tls = self_signed_tls(self.run_dir / "redis" / "tls")
            self.redis_tls_ca = tls.ca_file if tls else None
            self.redis = RedisServer(port=rc.port, data_dir=(self.run_dir / "redis").resolve(),
                                     maxmemory_bytes=rc.maxmemory_mb << 20, password=read_secret(rc.password_env),
                                     tls=tls)
            self.redis.start()
        except Exception as e:  # noqa: BLE001 - the cache is optional: slower, never failed
            say(f"could not start redis-server ({e}); continuing without the shared prefix cache")
            self.redis = None
            return None
        say(f"redis on 127.0.0.1:{rc.port} (maxmemory {rc.maxmemory_mb} MiB, allkeys-lru, password from "
            f"${rc.password_env}, tls {'on' if tls else 'off'})")
        return self.redis.url

    def redis_client_settings(self) -> dict:
        """How every Redis client of this deployment connects (no secret: names of variables and files)."""
        rc = self.config.redis
        return {"password_env": rc.password_env, "tls": rc.tls, "tls_ca_file": self.redis_tls_ca}

    def start_workers(self, redis_url: str | None, timeout_s: float = 900.0) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        from router.policy.planning import warm_hidden_states

        warm = warm_hidden_states(self.config)  # the probe artifact's layers, loaded at start on the drafter
        for name, pool in self.config.models.items():
            if pool.hosting == "ray":  # Ray Serve places and starts these (router/ray_pools.py, start_router)
                continue
            for i in range(pool.replicas):
                engine = pool.engine_dict()
                if warm is not None and warm[0] == name and engine.get("backend") == "vllm" \
                        and not engine.get("hidden_state_warm_layers"):
                    engine.update(warm[1])
                if redis_url and engine.get("kv_connector") == "redis":
                    from workers.kv.config import redis_kv_transfer_config

                    engine["kv_connector"] = redis_kv_transfer_config(
                        redis_url, replica_id=f"{name}-{i}", model_id=pool.model,
                        mac_key_env=self.config.redis.mac_key_env, **self.redis_client_settings())
                elif engine.get("kv_connector") == "redis":
                    engine["kv_connector"] = None
                from workers.kv.secrets import write_private_file

                config_file = write_private_file(self.run_dir / "workers" / f"worker-{name}-{i}.json",
                                                 json.dumps(engine))
                w = WorkerProcess(name, i, free_port(), config_file.resolve(),
                                  self.run_dir / "logs" / f"worker-{name}-{i}.log", tls_args=self.worker_tls_args())
                w.start()
                self.workers.append(w)
                say(f"starting worker {name}#{i} ({pool.backend}) on {w.address}; log: {w.log_path}")
        deadline = time.monotonic() + timeout_s
        pending = list(self.workers)
        last_note = 0.0
        while pending:
            for w in list(pending):
                if w.ready():
                    say(f"worker {w.model}#{w.index} ready in {time.monotonic() - w.started_at:.0f} s")
                    pending.remove(w)
                elif w.proc.poll() is not None:
                    tail = w.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"worker {w.model}#{w.index} exited with code {w.proc.returncode} while "
                                       f"loading; last log lines:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout_s:.0f} s: {[w.model for w in pending]}")
            if pending and time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                for w in pending:
                    say(f"  loading {w.model}#{w.index}: {_last_line(w.log_path)}")
            time.sleep(0.5)
        threading.Thread(target=self._supervise, daemon=True, name="worker-supervisor").start()

    def _supervise(self) -> None:
        while not self._stopping:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None and not self._stopping:
                    w.restarts += 1
                    say(f"worker {w.model}#{w.index} exited with code {w.proc.returncode}; restarting "
                        f"(restart {w.restarts}) on {w.address}")
                    w.reap()
                    w.start()
            time.sleep(1.0)

    def worker_tls_args(self) -> tuple[str, ...]:
        tls = self.config.tls
        return ("--tls-cert-file", tls.worker_cert_file, "--tls-key-file", tls.worker_key_file) \
            if tls.worker_cert_file else ()

    def start_router(self) -> None:
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        from router.serve_app import GRPC_SERVICERS, build_app

        sc = self.config.serve
        self.ingress = "cluster's own"
        if sc.ray_address:
            say("starting Ray Serve on the Ray cluster at the configured address")
            ray.init(address=sc.ray_address, logging_level="WARNING")
        else:
            from router.ingress import choose_ingress

            choice = choose_ingress(self.config)  # Ray's processes read it from the environment they inherit
            os.environ.update(choice.env)
            self.ingress = choice.mode
            self._ingress_dir = choice.env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")  # removed by stop()
            if choice.note:
                say(choice.note)
            say(f"starting Ray and Ray Serve ({'HAProxy' if choice.mode == 'haproxy' else 'Python proxy'} ingress)")
            from router.ray_pools import local_node_resources

            ray.init(num_cpus=sc.num_cpus, include_dashboard=False, logging_level="WARNING",
                     resources=local_node_resources(self.config) or None)  # one node holds every hosted pool
        tls = self.config.tls
        serve.start(  # Ray Serve's HTTP proxy serves HTTPS with these; its gRPC proxy has no TLS option
            http_options=HTTPOptions(host=sc.host, port=sc.http_port, ssl_certfile=tls.http_cert_file,
                                     ssl_keyfile=tls.http_key_file),
            grpc_options=gRPCOptions(port=sc.grpc_port, grpc_servicer_functions=GRPC_SERVICERS),
        )
        from router.ray_pools import deploy_pools

        for app in deploy_pools(self.config):  # `hosting: ray` pools: one Serve application each
            say(f"Ray-hosted pool ready: Serve application {app}")
        serve.run(build_app(self.config, self.addresses()), name=sc.app_name, route_prefix="/")
        say(f"router ready: gRPC {sc.host}:{sc.grpc_port} (thinkroute.v1.Router), HTTP {sc.host}:{sc.http_port} "
            f"({self.ingress} ingress)")

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        redis_url = self.start_redis()
        for scorer in self.config.router.scorers:  # the prefix scorer reads the index on the same Redis
            if scorer.name == "prefix" and redis_url and not scorer.params.get("redis_url"):
                scorer.params["redis_url"] = redis_url
                scorer.params.update({k: v for k, v in self.redis_client_settings().items() if v})
        self.start_workers(redis_url)
        self.start_router()

    def stop(self) -> None:
        self._stopping = True
        try:
            import ray
            from ray import serve

            if ray.is_initialized():
                say("stopping Ray Serve and Ray")
                serve.shutdown()
                ray.shutdown()
            if getattr(self, "_ingress_dir", None):
                import shutil

                shutil.rmtree(self._ingress_dir, ignore_errors=True)  # HAProxy's config, socket, state
        finally:
            for w in self.workers:
                say(f"stopping worker {w.model}#{w.index} (draining)")
                w.stop()
            if self.redis is not None:
                say("stopping redis")
                self.redis.stop()
        say("stopped")


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
    except FileNotFoundError:
        return "starting"
    return text[-1][-160:] if text else "starting"
