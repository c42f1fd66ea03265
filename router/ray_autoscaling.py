"""Ray Serve autoscaling on thinkroute's signals: router/autoscale.py's coupled decision as a Ray Serve custom
autoscaling policy (Ray >= 2.51: `autoscaling_config.policy` with metrics pushed by `record_autoscaling_stats`).

    pool replica.record_autoscaling_stats()   -> load_stats(worker LoadResponse)   running, waiting, KV, TTFT p95
    router replica.record_autoscaling_stats() -> router_stats(plan mix, pools)      predicted tokens/s per pool
          | Ray aggregates each metric per replica over `look_back_period_s` (AutoscalingContext.aggregated_metrics)
          v
    PoolPolicy(ctx)    one pool deployment (deployment-level policy; works with `serve.run`)
    AppPolicy(ctxs)    every deployment of one application (application-level policy; `serve deploy` / RayService):
                       the router deployment's demand metrics reach the pool deployments of the same app
          | observation(ctx) -> PoolObservation -> Autoscaler.step (router/autoscale.py: the same decision as
          v                                                    GetDesiredReplicas and ops/sim/autoscale.py)
    (desired replicas, policy_state)  -> Ray applies its delays, scaling factors and min/max bounds

Ray's own `upscale_delay_s` / `downscale_delay_s` come on top of the policy's decision: set both to 0 (as
`pool_autoscaling_config` does) so that scale-up follows the plan mix at once and scale-down is held by the
policy's `downscale_delay_s` only. The pool's bounds are Ray's (`capacity_adjusted_min/max_replicas`).

A deployment-level policy sees only its own deployment, so the router's demand has to reach a pool deployment in
its own application (router/ray_pools.py: `thinkroute-pool-<pool>`) through the pool's replicas:

    router replicas --every PUBLISH_INTERVAL_S--> DemandBoard (named Ray actor; sums the replicas' fresh reports)
    pool replica.record_autoscaling_stats() = pool_stats(pool, load): load_stats + DEMAND read from the board

`start_demand_publisher` runs in every router replica when some pool is Ray-hosted with `ray.autoscaling`.
Without a board (no such pool, or the router outside Ray) a pool scales on its queue, KV-cache usage and TTFT
(its decision's `by_signal` shows `demand: 0`). Within one application, `AppPolicy` reads the router
deployment's own pushed `router_stats` instead.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any, Iterable, Mapping

from router.autoscale import Autoscaler, Decision, PoolObservation, PoolTarget, pool_target

log = logging.getLogger("thinkroute.ray_autoscaling")

# Metric names pushed by replicas (floats; Ray aggregates each per replica over look_back_period_s).
RUNNING = "thinkroute_running"
WAITING = "thinkroute_waiting"
MAX_CONCURRENCY = "thinkroute_max_concurrency"
KV_CACHE_USAGE = "thinkroute_kv_cache_usage"
TTFT_P95_MS = "thinkroute_ttft_p95_ms"
GENERATED_TOKENS_PER_S = "thinkroute_generated_tokens_per_s"
#: Predicted generated tokens/s for a pool: pushed by router replicas as `DEMAND:<pool>`, or by pool replicas as DEMAND.
DEMAND = "thinkroute_demand_tokens_per_s"
#: The router's p95 latency of one call to a pool, pushed by router replicas as `LATENCY_P95_MS:<pool>`.
LATENCY_P95_MS = "thinkroute_latency_p95_ms"

POOL_POLICY = "router.ray_autoscaling:PoolPolicy"
APP_POLICY = "router.ray_autoscaling:AppPolicy"
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


def router_stats(mix, pools: Iterable[str], latencies_ms: Mapping[str, Iterable[float]] | None = None) -> dict[str, float]:
    """A router replica's `record_autoscaling_stats()` result: its plan mix's predicted tokens/s for every pool
    (0 for pools no chosen plan calls, so a pool's demand falls back to 0 in Ray's window) and, where
    `latencies_ms` has samples, its p95 call latency per pool. `mix`: router/autoscale.py's PlanMix."""
    demand = mix.demand()
    out = {f"{DEMAND}:{pool}": float(demand.get(pool, 0.0)) for pool in pools}
    for pool, samples in (latencies_ms or {}).items():
        xs = sorted(samples)
        if xs:
            out[f"{LATENCY_P95_MS}:{pool}"] = float(xs[min(len(xs) - 1, int(0.95 * len(xs)))])
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
    import ray

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


def observation(ctx, demand_tokens_per_s: float | None = None, latency_p95_ms: float | None = None,
                default_max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> PoolObservation:
    """One pool deployment's PoolObservation from its AutoscalingContext.

    running / waiting / max concurrency / KV usage / TTFT p95 from the metrics its replicas push (`load_stats`),
    plus the requests Ray holds queued at handles; without pushed metrics, Ray's own ongoing and queued
    requests. Demand and router latency: the arguments (AppPolicy: from the router deployment), else the
    replicas' pushed DEMAND (mean: each replica reports the pool's value), else 0.
    """
    m = ctx.aggregated_metrics or {}
    queued_at_handles = float(ctx.total_queued_requests or 0.0)
    running = _values(m, RUNNING)
    if running:
        run, wait = sum(running), sum(_values(m, WAITING)) + queued_at_handles
    else:
        run, wait = float(ctx.total_running_requests), queued_at_handles
    conc = _values(m, MAX_CONCURRENCY)
    kv = _values(m, KV_CACHE_USAGE)
    if demand_tokens_per_s is None:
        pushed = _values(m, DEMAND)
        demand_tokens_per_s = sum(pushed) / len(pushed) if pushed else 0.0
    return PoolObservation(
        replicas=int(ctx.current_num_replicas), running=round(run), waiting=round(wait),
        max_concurrency=round(sum(conc) / len(conc)) if conc else default_max_concurrency,
        ttft_p95_ms=max(_values(m, TTFT_P95_MS), default=0.0),
        latency_p95_ms=latency_p95_ms if latency_p95_ms is not None else 0.0,
        demand_tokens_per_s=demand_tokens_per_s, kv_cache_usage=sum(kv) / len(kv) if kv else 0.0)


def router_view(ctx) -> tuple[dict[str, float], dict[str, float]]:
    """(demand tokens/s per pool summed over the router's replicas, worst p95 latency per pool) from the router
    deployment's AutoscalingContext (its replicas push `router_stats`)."""
    demand: dict[str, float] = {}
    latency: dict[str, float] = {}
    for name, per_replica in ((ctx.aggregated_metrics or {}) if ctx is not None else {}).items():
        base, _, pool = name.partition(":")
        if pool and base == DEMAND:
            demand[pool] = sum(per_replica.values())
        elif pool and base == LATENCY_P95_MS:
            latency[pool] = max(per_replica.values(), default=0.0)
    return demand, latency


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


class _Decider:
    """router/autoscale.py's Autoscaler over Ray's contexts: one target per pool, Ray's bounds, state kept here."""

    def __init__(self, autoscale: Mapping[str, Any] | None, config: str | None) -> None:
        self.section = _autoscale_section(autoscale, config)
        self.autoscaler = Autoscaler({}, self.section.downscale_delay_s)

    def target(self, pool: str, ctx) -> PoolTarget:
        t = pool_target(self.section.pools.get(pool, self.section.default))
        lo, hi = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        return dataclasses.replace(t, min_replicas=min(lo, hi), max_replicas=hi)

    def decide(self, pool: str, ctx, obs: PoolObservation) -> tuple[int, dict[str, Any]]:
        self.autoscaler.targets[pool] = self.target(pool, ctx)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        d: Decision = self.autoscaler.step(now, {pool: obs}, {pool: int(ctx.target_num_replicas)})[pool]
        state = dict(ctx.policy_state or {})
        last = state.get("thinkroute", {}).get("desired")
        state["thinkroute"] = {"pool": pool, "desired": d.desired, "reason": d.reason,
                               "by_signal": {k: int(v) for k, v in d.by_signal.items()}}
        if last != d.desired:
            log.info("pool %s: %d replicas (%s; asks %s)", pool, d.desired, d.reason, dict(d.by_signal))
        return d.desired, state


class PoolPolicy:
    """Deployment-level policy for one model pool deployment:
    `autoscaling_config.policy = {policy_function: "router.ray_autoscaling:PoolPolicy", policy_kwargs: {...}}`.

    Ray creates it once per deployment with `policy_kwargs` and calls it every control-loop tick with the
    deployment's AutoscalingContext; it returns (desired replicas, policy_state) with the decision's reason
    and per-signal asks under policy_state["thinkroute"].
    kwargs: `pool` (default: from the application / deployment name, `pool_name`); the targets from
    `autoscale` (the config's `autoscale:` section as a dict) or `config` (path of a thinkroute YAML config
    readable where the Serve controller runs); neither: the section's defaults.
    """

    def __init__(self, pool: str | None = None, autoscale: Mapping[str, Any] | None = None,
                 config: str | None = None) -> None:
        self.pool = pool
        self.decider = _Decider(autoscale, config)

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        pool = self.pool or pool_name(ctx.app_name, ctx.deployment_name)
        return self.decider.decide(pool, ctx, observation(ctx))


class AppPolicy:
    """Application-level policy (`autoscaling_policy:` of an application in a Serve config) for an application
    holding the router and its pool deployments: each pool deployment is decided on its own signals plus the
    router deployment's plan-mix demand and call latency for that pool (coupled scaling); any other deployment
    (the router itself) by Ray's default policy (ongoing requests per replica).
    kwargs: `router` (the router deployment's name), `pools` ({deployment name: pool}; default: deployments
    named like a pool of `autoscale.pools` / the config's models), `autoscale` / `config` as for PoolPolicy.
    Only deployments with an `autoscaling_config` are handed to it by Ray.
    """

    def __init__(self, router: str = "router", pools: Mapping[str, str] | None = None,
                 autoscale: Mapping[str, Any] | None = None, config: str | None = None) -> None:
        self.router = router
        self.decider = _Decider(autoscale, config)
        names = set(self.decider.section.pools)
        if config:
            from router.config import load_config

            names |= set(load_config(config).models)
        self.pools = dict(pools) if pools is not None else {n: n for n in names}

    def __call__(self, contexts: Mapping[Any, Any]) -> tuple[dict[Any, int], dict[Any, dict[str, Any]]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        router_ctx = next((c for c in contexts.values() if c.deployment_name == self.router), None)
        demand, latency = router_view(router_ctx)
        decisions: dict[Any, int] = {}
        states: dict[Any, dict[str, Any]] = {}
        for dep_id, ctx in contexts.items():
            pool = self.pools.get(ctx.deployment_name)
            if pool is None:
                n, state = replica_queue_length_autoscaling_policy(ctx)
                decisions[dep_id], states[dep_id] = n, dict(state or {})
                continue
            obs = observation(ctx, demand.get(pool, 0.0), latency.get(pool, 0.0))
            decisions[dep_id], states[dep_id] = self.decider.decide(pool, ctx, obs)
        return decisions, states


def pool_autoscaling_config(pool: str, autoscale: Mapping[str, Any] | Any, *,
                            look_back_period_s: float = 15.0) -> dict[str, Any]:
    """`autoscaling_config` for a Ray-hosted pool deployment driven by PoolPolicy: the pool's bounds from
    `autoscale` (the config's `autoscale:` section, as AutoscaleConfig or dict), Ray's delays off (the policy
    holds scale-down for `autoscale.downscale_delay_s`), metrics recorded every 0.2 x `look_back_period_s`
    (Ray's default factor) and averaged over it. Give the deployment `record_autoscaling_stats` (load_stats)."""
    section = _autoscale_section(autoscale if isinstance(autoscale, Mapping) else autoscale.model_dump(mode="json"), None)
    t = pool_target(section.pools.get(pool, section.default))
    return {"min_replicas": t.min_replicas, "max_replicas": max(1, t.max_replicas),
            "upscale_delay_s": 0.0, "downscale_delay_s": 0.0, "look_back_period_s": look_back_period_s,
            "policy": {"policy_function": POOL_POLICY,
                       "policy_kwargs": {"pool": pool, "autoscale": section.model_dump(mode="json")}}}
