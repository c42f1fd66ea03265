"""Ray-hosted model pools: a pool's workers are the replicas of a Ray Serve deployment placed by resources.

    models:
      drafter:
        hosting: ray
        replicas: 2
        ray: {resources: {drafter: 1}, num_gpus: 0}
    router:
      discovery: {enabled: true}

Each pool with `hosting: ray` is its own Serve application, `thinkroute-pool-<pool>`, holding one
deployment, `worker`, with `num_replicas = replicas` and `ray_actor_options = {num_cpus, num_gpus,
resources}` from `models.<pool>.ray`: Ray starts a replica only on a node with those resources free, so
a pool lands on the nodes that have its hardware. Each replica (`HostedWorker`) runs one real
`thinkroute worker` as a child process on its node (bound to the node's IP, a free port), which
registers itself in the Redis worker registry (workers/registration.py) under the pool's name with the
replica id `<pool>-<node id, 12 hex>-<Serve replica id>`. The router needs no Ray handle to its workers:
its ReplicaSet follows the registry (router.discovery), probes them with grpc.health.v1, and calls them
over gRPC like any other worker, with the Caller's deadlines and retry rule.

Node loss. The replica's actor dies with its node, and its worker dies with the actor (PR_SET_PDEATHSIG
SIGKILL: no drain, as when the machine is gone). Calls in flight there fail UNAVAILABLE and are retried on
another replica when no output reached the client yet (router/caller.py); otherwise they fail with that
status. The worker's registration expires (3 x `ray.heartbeat_s`) and the router's pool drops it within
that + `router.discovery.poll_interval_s`. Serve's controller keeps asking for `replicas` replicas: the
lost one waits for a node with the resources and starts there when one (re)joins; its worker registers
and takes traffic without a router restart.

Scaling. Without `ray.autoscaling` the application runs with Serve's external scaler on
(`external_scaler_enabled`, Ray >= 2.52): `scale_pool` sets the deployment's target replicas through the
Serve controller's `update_deployment_replicas`, the call behind Ray's REST
`POST /api/v1/applications/{app}/deployments/worker/scale`; `thinkroute.v1.Cluster/SetReplicas` on a
hosted pool goes there (router/cluster_service.py PoolScaler). With `ray.autoscaling: true`, Serve
autoscales the deployment with thinkroute's custom policy (router/ray_autoscaling.py) between
`autoscale.pools.<pool>` min_replicas and max_replicas, reading the per-replica numbers
`HostedWorker.record_autoscaling_stats` reports; SetReplicas then refuses (the policy owns the count).

Secrets: the registry's Redis password is read by the worker from `router.discovery.password_env` in the
environment the Ray node was started with (never in argv, runtime_env or the Serve config).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("thinkroute.ray_pools")

REPO = Path(__file__).resolve().parents[1]
APP_PREFIX = "thinkroute-pool-"
DEPLOYMENT = "worker"
#: Node ids are 56 hex digits; the first 12 identify a node of one cluster in replica ids and logs.
NODE_ID_CHARS = 12


def app_name(pool: str) -> str:
    """The Serve application of a hosted pool."""
    return f"{APP_PREFIX}{pool}"


def hosted_pools(config) -> list[str]:
    """Names of the pools with `hosting: ray`, in config order."""
    return [name for name, pool in config.models.items() if pool.hosting == "ray"]


def node_of(replica_id: str) -> str:
    """The node id prefix (NODE_ID_CHARS hex digits) in a hosted worker's replica id; "" if it has none."""
    parts = replica_id.rsplit("-", 2)
    return parts[1] if len(parts) == 3 and len(parts[1]) == NODE_ID_CHARS else ""


def actor_options(pool_cfg) -> dict[str, Any]:
    """`ray_actor_options` of a hosted pool's replicas: what Ray must find free on a node to place one."""
    rc = pool_cfg.ray
    opts: dict[str, Any] = {"num_cpus": rc.num_cpus, "num_gpus": rc.num_gpus}
    if rc.resources:
        opts["resources"] = dict(rc.resources)
    return opts


def local_node_resources(config) -> dict[str, float]:
    """Custom resources a one-machine Ray needs so every hosted pool fits on it (`thinkroute serve`):
    the sum over hosted pools of their per-replica resources x max(replicas, autoscale max_replicas)."""
    out: dict[str, float] = {}
    for name in hosted_pools(config):
        pool = config.models[name]
        auto = config.autoscale.pools.get(name, config.autoscale.default)
        n = max(pool.replicas, auto.max_replicas)
        for key, amount in pool.ray.resources.items():
            out[key] = out.get(key, 0.0) + amount * n
    return out


def registry_settings(config, pool: str) -> dict[str, Any]:
    """The `registration:` block of a hosted worker's config: the router's registry (router.discovery)."""
    from router.discovery import discovery_from_config

    d = discovery_from_config(config)
    if d is None:
        raise ValueError(f"models.{pool}: hosting ray needs router.discovery.enabled")
    reg: dict[str, Any] = {"url": d.url, "pool": pool, "heartbeat_s": config.models[pool].ray.heartbeat_s,
                           "password_env": d.password_env or "THINKROUTE_REDIS_PASSWORD", "tls": d.tls}
    if d.tls_ca_file:
        reg["tls_ca_file"] = d.tls_ca_file
    return reg


def worker_config(config, pool: str) -> dict[str, Any]:
    """What a hosted replica writes to its worker's `--config` file: the engine fields and `registration:`."""
    return {**config.models[pool].engine_dict(), "registration": registry_settings(config, pool)}


def autoscaling_config(config, pool: str) -> dict[str, Any] | None:
    """Serve `autoscaling_config` of a pool with `ray.autoscaling` (router/ray_autoscaling.py's policy, bounded
    by `autoscale.pools.<pool>`, starting at `replicas`), else None (external scaler)."""
    pc = config.models[pool]
    if not pc.ray.autoscaling:
        return None
    from router.ray_autoscaling import pool_autoscaling_config

    auto = config.autoscale.pools.get(pool, config.autoscale.default)
    out = dict(pool_autoscaling_config(pool, config.autoscale))
    out.setdefault("initial_replicas", min(max(pc.replicas, auto.min_replicas), auto.max_replicas))
    return out


def _die_with_parent_kill() -> None:
    """In the child, before exec: SIGKILL it when the replica's process dies (its node gone)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class HostedWorker:
    """One replica of a hosted pool: a `thinkroute worker` child process on this replica's node.

    `worker_cfg` is `worker_config(...)` (engine fields + registration); `grace_s` bounds the drain when
    Serve stops the replica (scale-down, redeploy). Ready once the worker serves and is registered."""

    async def __init__(self, pool: str, worker_cfg: dict[str, Any], grace_s: float = 20.0,
                       ready_timeout_s: float = 900.0) -> None:
        import ray
        from ray import serve

        self.pool, self.grace_s = pool, grace_s
        self.node_id = ray.get_runtime_context().get_node_id()
        try:
            tag = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - constructed outside Serve (tests)
            tag = os.urandom(4).hex()
        self.replica_id = f"{pool}-{self.node_id[:NODE_ID_CHARS]}-{tag}"
        host = ray.util.get_node_ip_address()
        self.dir = Path(tempfile.mkdtemp(prefix=f"thinkroute-{pool}-"))
        cfg_file = self.dir / "worker.json"
        fd = os.open(cfg_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(worker_cfg, f)
        self.ready_file, self.log_path = self.dir / "ready", self.dir / "worker.log"
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "worker", "--config", str(cfg_file), "--host", host, "--port", "0",
             "--ready-file", str(self.ready_file), "--replica-id", self.replica_id, "--grace", str(grace_s),
             "--metrics-port", "0"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONPATH": pythonpath}, preexec_fn=_die_with_parent_kill)
        deadline = time.monotonic() + ready_timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pool {pool}: worker exited with {self.proc.returncode} while loading on node "
                                   f"{self.node_id[:NODE_ID_CHARS]}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"pool {pool}: worker not ready after {ready_timeout_s:.0f} s:\n{self._tail()}")
            await asyncio.sleep(0.2)
        self.address = self.ready_file.read_text().strip()
        self._client = None
        log.info("pool %s: replica %s serves on %s (node %s)", pool, self.replica_id, self.address, self.node_id)

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    async def where(self) -> dict[str, str]:
        """This replica's node id, worker address and replica id (as registered)."""
        return {"node_id": self.node_id, "address": self.address, "replica_id": self.replica_id, "pool": self.pool}

    async def check_health(self) -> None:
        """Serve's health check: the replica is unhealthy (and replaced) once its worker has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"pool {self.pool}: worker {self.replica_id} exited with {self.proc.returncode}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Per-replica numbers for Serve's custom autoscaling policy (`ray.autoscaling`): the worker's Load RPC
        and the router's predicted demand for the pool (router/ray_autoscaling.py `pool_stats`). {} while the
        worker does not answer."""
        from router.ray_autoscaling import pool_stats
        from router.worker_client import WorkerClient

        if self._client is None:
            self._client = WorkerClient(self.address)
        try:
            load = await self._client.load(timeout=2.0)
        except Exception:  # noqa: BLE001 - a worker that does not answer reports nothing this round
            return {}
        return await pool_stats(self.pool, load)

    def __del__(self) -> None:
        """Serve stops the replica: the worker deregisters and drains (SIGTERM), killed after `grace_s`."""
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.grace_s + 5)
        except subprocess.TimeoutExpired:
            self._kill()


def pool_app(config, pool: str):
    """The Serve application of hosted pool `pool` (for `serve.run(..., name=app_name(pool))`)."""
    from ray import serve

    pc = config.models[pool]
    if pc.hosting != "ray":
        raise ValueError(f"models.{pool} has hosting {pc.hosting!r}; only hosting ray pools are Serve applications")
    grace = 20.0
    options: dict[str, Any] = dict(name=DEPLOYMENT, ray_actor_options=actor_options(pc),
                                   max_ongoing_requests=1000, graceful_shutdown_timeout_s=grace + 10,
                                   health_check_period_s=2.0, health_check_timeout_s=10.0)
    auto = autoscaling_config(config, pool)
    if auto is None:
        options["num_replicas"] = pc.replicas
    else:
        options["autoscaling_config"] = auto
    return serve.deployment(HostedWorker, **options).bind(pool, worker_config(config, pool), grace,
                                                          pc.ray.ready_timeout_s)


def deploy_pools(config, blocking: bool = True) -> list[str]:
    """Deploy every hosted pool's application at once (`serve.run_many`; Serve must be started) and return
    their names. With `blocking`, returns once every replica serves (its worker registered); else at once."""
    from ray import serve

    targets = [serve.RunTarget(pool_app(config, pool), name=app_name(pool), route_prefix=None,
                               external_scaler_enabled=autoscaling_config(config, pool) is None)
               for pool in hosted_pools(config)]
    if targets:
        serve.run_many(targets, wait_for_applications_running=blocking)
    return [t.name for t in targets]


def pool_app_builder(args: dict[str, Any]):
    """`import_path: router.ray_pools:pool_app_builder` in a Serve config (`serve deploy`): args `config` (the
    thinkroute YAML) and `pool`. Set `external_scaler_enabled: true` on that application unless the pool
    has `ray.autoscaling: true`."""
    from router.config import load_config

    return pool_app(load_config(args.get("config")), str(args["pool"]))


class NotScalable(ValueError):
    """SetReplicas on a hosted pool whose replica count Serve's autoscaling policy owns."""


async def scale_pool(config, pool: str, replicas: int) -> None:
    """Set hosted pool `pool`'s deployment to `replicas` replicas (Serve starts or stops them, placed by
    resources; replicas no node can take now stay pending until one can). NotScalable under a policy."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if config.models[pool].ray.autoscaling:
        raise NotScalable(f"pool {pool!r} is scaled by Ray Serve's autoscaling policy (models.{pool}.ray.autoscaling "
                          "is true); set it to false to set its replicas")
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    await controller.update_deployment_replicas.remote(DeploymentID(name=DEPLOYMENT, app_name=app_name(pool)),
                                                       replicas)
