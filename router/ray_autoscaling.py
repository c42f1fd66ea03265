"""Ray Serve autoscaling on thinkroute's signals: router/autoscale.py's coupled decision as a Ray Serve custom
autoscaling policy (Ray >= 2.51: `autoscaling_config.policy` with metrics pushed by `record_autoscaling_stats`).

    router replicas --every PUBLISH_INTERVAL_S--> DemandBoard (named Ray actor: the plan mix's predicted
                                                   tokens/s per pool, summed over the router's replicas)
    pool replica.record_autoscaling_stats() = pool_stats(pool, load): load_stats(worker Load) + DEMAND from the board
          | Ray aggregates each metric per replica over `look_back_period_s` (AutoscalingContext.aggregated_metrics)
          v
    PoolPolicy(ctx)   (deployment-level policy of a pool's Serve deployment, router/ray_pools.py)
          | observation(ctx) -> PoolObservation -> Autoscaler.step (router/autoscale.py: the same decision as
          v                                                    GetDesiredReplicas and ops/sim/autoscale.py)
    (desired replicas, policy_state)  -> Ray applies its delays, scaling factors and min/max bounds

Ray's own `upscale_delay_s` / `downscale_delay_s` come on top of the policy's decision: set both to 0 (as
`pool_autoscaling_config` does) so that scale-up follows the plan mix at once and scale-down is held by the
policy's `downscale_delay_s` only. The pool's bounds are Ray's (`capacity_adjusted_min/max_replicas`).

Why a board: a deployment-level policy sees only its own deployment, and each Ray-hosted pool is its own
application (`thinkroute-pool-<pool>`), so the router's demand reaches the policy through the pool's replicas.
`start_demand_publisher` runs in every router replica when some pool is Ray-hosted with `ray.autoscaling`.
Without a board (no such pool, or the router outside Ray) a pool scales on its queue, KV-cache usage and TTFT
(its decision's `by_signal` shows `demand: 0`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any, Mapping

from router.autoscale import Autoscaler, Decision, PoolObservation, PoolTarget, pool_target

# A child of Ray Serve's logger: in the Serve controller, where the policy runs, its lines reach the controller log.
log = logging.getLogger("ray.serve.thinkroute_autoscaling")

# Metric names pushed by replicas (floats; Ray aggregates each per replica over look_back_period_s).
RUNNING = "thinkroute_running"
WAITING = "thinkroute_waiting"
MAX_CONCURRENCY = "thinkroute_max_concurrency"
KV_CACHE_USAGE = "thinkroute_kv_cache_usage"
TTFT_P95_MS = "thinkroute_ttft_p95_ms"
GENERATED_TOKENS_PER_S = "thinkroute_generated_tokens_per_s"
#: The router's predicted generated tokens/s for the pool (from the DemandBoard).
DEMAND = "thinkroute_demand_tokens_per_s"

POOL_POLICY = "router.ray_autoscaling:PoolPolicy"
#: Application-name prefix of Ray-hosted pools (`thinkroute-pool-<pool>`), from which a policy reads its pool name.
POOL_APP_PREFIX = "thinkroute-pool-"
DEFAULT_MAX_CONCURRENCY = 32
#: The DemandBoard actor's name and namespace (Serve replicas run in "serve").
DEMAND_BOARD, BOARD_NAMESPACE = "thinkroute-demand-board", "serve"
#: Seconds between a router replica's demand reports; a report older than 3 x this no longer counts.
PUBLISH_INTERVAL_S = 2.0


# -- what replicas push ------------------------------------------------------------------------------
def load_stats(load) -> dict[str, float]:
    """A pool replica's `record_autoscaling_stats()` result from its worker's `Load` answer (LoadResponse)."""
    out = {RUNNING: float(load.running), WAITING: float(load.queued),
           MAX_CONCURRENCY: float(max(1, load.max_concurrency)), TTFT_P95_MS: float(load.ttft_p95_ms),
           GENERATED_TOKENS_PER_S: float(load.generated_tokens_per_s)}
    if load.HasField("kv_cache_usage"):
        out[KV_CACHE_USAGE] = float(load.kv_cache_usage)
    return out


async def pool_stats(pool: str, load) -> dict[str, float]:
    """`record_autoscaling_stats()` of a Ray-hosted pool replica: `load_stats(load)` plus the router's predicted
    demand for `pool` from the DemandBoard (absent when there is no board)."""
    out = load_stats(load)
    demand = await read_demand(pool)
    if demand is not None:
        out[DEMAND] = demand
    return out


# -- the router's demand, across applications --------------------------------------------------------
class DemandBoard:
    """Predicted tokens/s per pool of every router replica, summed over the replicas whose last report is
    fresh. Runs as the named Ray actor DEMAND_BOARD (created by the first router replica that reports)."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, float]]] = {}

    def report(self, replica: str, demand: dict[str, float], ttl_s: float) -> None:
        self._reports[replica] = (time.monotonic() + ttl_s, {p: float(v) for p, v in demand.items()})

    def demand(self) -> dict[str, float]:
        now = time.monotonic()
        self._reports = {r: v for r, v in self._reports.items() if v[0] >= now}
        out: dict[str, float] = {}
        for _, per_pool in self._reports.values():
            for pool, v in per_pool.items():
                out[pool] = out.get(pool, 0.0) + v
        return out


def _board(create: bool):
    """The DemandBoard actor's handle (created when `create`). Raises outside a running Ray: `ray.get_actor` would
    otherwise start a local Ray cluster in this process as a side effect."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not running in this process: no demand board")
    if create:
        return ray.remote(DemandBoard).options(name=DEMAND_BOARD, namespace=BOARD_NAMESPACE, get_if_exists=True,
                                               num_cpus=0, max_restarts=-1).remote()
    return ray.get_actor(DEMAND_BOARD, namespace=BOARD_NAMESPACE)


_reader = None


async def read_demand(pool: str, timeout_s: float = 2.0) -> float | None:
    """The routers' summed demand for `pool` (tokens/s) from the DemandBoard; None when there is none."""
    global _reader
    try:
        if _reader is None:
            _reader = await asyncio.to_thread(_board, False)
        return float((await asyncio.wait_for(_reader.demand.remote(), timeout_s)).get(pool, 0.0))
    except Exception:  # noqa: BLE001 - no board (yet), or it died: no demand this round
        _reader = None
        return None


def autoscaled_pools(config) -> list[str]:
    """Pools that are Ray-hosted with Serve autoscaling on (`hosting: ray`, `ray.autoscaling: true`)."""
    return [n for n, p in config.models.items()
            if getattr(p, "hosting", "local") == "ray" and getattr(getattr(p, "ray", None), "autoscaling", False)]


def start_demand_publisher(mix, config, replica: str | None = None,
                           interval_s: float = PUBLISH_INTERVAL_S) -> asyncio.Task | None:
    """In a router replica (on its event loop): report the plan mix's demand for every pool to the DemandBoard
    every `interval_s`, for as long as the replica lives. None (nothing started) unless `config` has an
    autoscaled Ray-hosted pool. `mix`: the replica's PlanMix."""
    if not autoscaled_pools(config):
        return None
    name = replica or uuid.uuid4().hex
    pools = list(config.models)

    async def run() -> None:
        board, warned = None, False
        while True:
            try:
                if board is None:
                    board = await asyncio.to_thread(_board, True)
                d = mix.demand()
                await board.report.remote(name, {p: d.get(p, 0.0) for p in pools}, 3 * interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving; report again next round
                if not warned:
                    log.warning("could not report the plan-mix demand to the demand board; retrying", exc_info=True)
                    warned = True
                board = None
            await asyncio.sleep(interval_s)

    return asyncio.get_running_loop().create_task(run())


# -- what the policy reads ---------------------------------------------------------------------------
def _values(metrics: Mapping[str, Mapping[Any, float]], name: str) -> list[float]:
    return [float(v) for v in (metrics.get(name) or {}).values()]


def observation(ctx, default_max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> PoolObservation:
    """One pool deployment's PoolObservation from its AutoscalingContext.

    running / waiting / max concurrency / KV usage / TTFT p95 from the metrics its replicas push (`load_stats`),
    plus the requests Ray holds queued at handles; without pushed metrics, Ray's own ongoing and queued
    requests. Demand: the replicas' pushed DEMAND (their mean: each reports the pool's value), else 0. The
    router-side latency SLO term is not fed here (latency_p95_ms 0); TTFT is.
    """
    m = ctx.aggregated_metrics or {}
    queued_at_handles = float(ctx.total_queued_requests or 0.0)
    running = _values(m, RUNNING)
    if running:
        run, wait = sum(running), sum(_values(m, WAITING)) + queued_at_handles
    else:
        run, wait = float(ctx.total_running_requests), queued_at_handles
    conc, kv, demand = _values(m, MAX_CONCURRENCY), _values(m, KV_CACHE_USAGE), _values(m, DEMAND)
    return PoolObservation(
        replicas=int(ctx.current_num_replicas), running=round(run), waiting=round(wait),
        max_concurrency=round(sum(conc) / len(conc)) if conc else default_max_concurrency,
        ttft_p95_ms=max(_values(m, TTFT_P95_MS), default=0.0),
        demand_tokens_per_s=sum(demand) / len(demand) if demand else 0.0,
        kv_cache_usage=sum(kv) / len(kv) if kv else 0.0)


def pool_name(app_name: str | None, deployment_name: str) -> str:
    """A deployment's pool: the suffix of a `thinkroute-pool-<pool>` application, else the deployment's name."""
    if app_name and app_name.startswith(POOL_APP_PREFIX) and len(app_name) > len(POOL_APP_PREFIX):
        return app_name[len(POOL_APP_PREFIX):]
    return deployment_name


def _autoscale_section(autoscale: Mapping[str, Any] | None, config: str | None):
    from router.config import AutoscaleConfig, load_config

    if config:
        return load_config(config).autoscale
    return AutoscaleConfig.model_validate(dict(autoscale or {}))


class PoolPolicy:
    """Deployment-level policy for one model pool deployment:
    `autoscaling_config.policy = {policy_function: "router.ray_autoscaling:PoolPolicy", policy_kwargs: {...}}`.

    Ray creates it once per deployment with `policy_kwargs` and calls it every control-loop tick with the
    deployment's AutoscalingContext; it returns (desired replicas, policy_state) with the decision's reason
    and per-signal asks under policy_state["thinkroute"]. Its Autoscaler (and the scale-down hold) lives in
    this object, in the Serve controller: a restarted controller starts the hold afresh.
    kwargs: `pool` (default: from the application / deployment name, `pool_name`); the targets from
    `autoscale` (the config's `autoscale:` section as a dict) or `config` (path of a thinkroute YAML config
    readable where the Serve controller runs); neither: the section's defaults.
    """

    def __init__(self, pool: str | None = None, autoscale: Mapping[str, Any] | None = None,
                 config: str | None = None) -> None:
        self.pool = pool
        self.section = _autoscale_section(autoscale, config)
        self.autoscaler = Autoscaler({}, self.section.downscale_delay_s)

    def target(self, pool: str, ctx) -> PoolTarget:
        """The pool's `autoscale:` target with Ray's (capacity-adjusted) replica bounds."""
        t = pool_target(self.section.pools.get(pool, self.section.default))
        lo, hi = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        return dataclasses.replace(t, min_replicas=min(lo, hi), max_replicas=hi)

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        pool = self.pool or pool_name(ctx.app_name, ctx.deployment_name)
        self.autoscaler.targets[pool] = self.target(pool, ctx)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        d: Decision = self.autoscaler.step(now, {pool: observation(ctx)}, {pool: int(ctx.target_num_replicas)})[pool]
        state = dict(ctx.policy_state or {})
        last = state.get("thinkroute", {}).get("desired")
        state["thinkroute"] = {"pool": pool, "desired": d.desired, "reason": d.reason,
                               "by_signal": {k: int(v) for k, v in d.by_signal.items()}}
        if last != d.desired:
            log.info("pool %s: %d replicas (%s; asks %s)", pool, d.desired, d.reason, dict(d.by_signal))
        return d.desired, state


def pool_autoscaling_config(pool: str, autoscale: Mapping[str, Any] | Any, *,
                            look_back_period_s: float = 15.0) -> dict[str, Any]:
    """`autoscaling_config` for a Ray-hosted pool deployment driven by PoolPolicy: the pool's bounds from
    `autoscale` (the config's `autoscale:` section, as AutoscaleConfig or dict), Ray's delays off (the policy
    holds scale-down for `autoscale.downscale_delay_s`), metrics recorded every 0.2 x `look_back_period_s`
    (Ray's default factor) and averaged over it. The deployment's `record_autoscaling_stats` returns `pool_stats`."""
    section = _autoscale_section(autoscale if isinstance(autoscale, Mapping) else autoscale.model_dump(mode="json"), None)
    t = pool_target(section.pools.get(pool, section.default))
    return {"min_replicas": t.min_replicas, "max_replicas": max(1, t.max_replicas),
            "upscale_delay_s": 0.0, "downscale_delay_s": 0.0, "look_back_period_s": look_back_period_s,
            "policy": {"policy_function": POOL_POLICY,
                       "policy_kwargs": {"pool": pool, "autoscale": section.model_dump(mode="json")}}}
