"""Coupled scaling: replicas per model pool from the demand the router's own plan mix predicts, plus queue and SLO.

    planned plan  -> PlanMix.observe_plan       (at planning time: before any model call, before any queue grows)
    finished plan -> PlanMix.observe_usage      (learns generated tokens per plan and pool)
    PlanMix.demand() -> {pool: tokens/s}        (sum over plans of plan rate x tokens that plan asks of the pool)
    PoolObservation + PoolTarget -> desired_replicas() -> Decision   (max over the signals, clamped to bounds)
    Autoscaler.step(now, observations)          (scale up at once, down only after `downscale_delay_s` of lower asks)

Why: the router knows which plans it is choosing, so a dial change (more reasoner plans) or a shift in the
query mix moves each pool's demand the moment plans are chosen, while a queue-driven policy (Ray Serve's
default: ongoing requests per replica) sees it only once requests pile up. The demand term follows
HeteroScale (scale on decode tokens/s); the SLO term follows Dynamo's planner (TTFT / latency targets).
Pure logic: no Ray, no gRPC; the Cluster service (router/cluster_service.py) and the simulator
(ops/sim/autoscale.py) call the same functions.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping


@dataclass(frozen=True)
class PoolTarget:
    """What one pool should achieve and what one replica can do (autoscale.pools.<pool> in the config)."""

    capacity_tokens_per_s: float
    """Generated tokens per second one replica sustains at its batch size (measured; docs/benchmarks.md)."""
    ttft_p95_ms: float = 0.0
    """SLO: p95 time to first token at the workers; 0 = no target."""
    latency_p95_ms: float = 0.0
    """SLO: p95 latency of one model call as the router sees it; 0 = no target."""
    min_replicas: int = 1
    max_replicas: int = 8
    target_utilisation: float = 0.7
    """Fraction of capacity (tokens/s, and concurrency slots) a replica should run at."""
    kv_cache_usage_target: float = 0.0
    """Mean KV-cache usage (fraction) a replica should run at; 0 = KV usage does not drive scaling."""

    def __post_init__(self) -> None:
        if not self.capacity_tokens_per_s > 0:
            raise ValueError(f"capacity_tokens_per_s must be > 0, got {self.capacity_tokens_per_s}")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], got {self.target_utilisation}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if not 0 <= self.kv_cache_usage_target <= 1:
            raise ValueError(f"kv_cache_usage_target must be in [0, 1], got {self.kv_cache_usage_target}")


@dataclass(frozen=True)
class PoolObservation:
    """One pool now: what its workers report and what the plan mix predicts."""

    replicas: int
    """Healthy replicas serving now."""
    running: int = 0
    waiting: int = 0
    max_concurrency: int = 32
    """Requests one replica runs at once (its Info / Load)."""
    ttft_p95_ms: float = 0.0
    latency_p95_ms: float = 0.0
    demand_tokens_per_s: float = 0.0
    """Predicted generated tokens/s the chosen plans ask of this pool (PlanMix.demand)."""
    kv_cache_usage: float = 0.0
    """Mean fraction of the KV cache in use over the serving replicas (0 where not reported)."""


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    """The signal that decided: demand, queue, ttft_p95, latency_p95, kv_cache, min_replicas or max_replicas."""
    by_signal: Mapping[str, int] = field(default_factory=dict)


def desired_replicas(obs: PoolObservation, target: PoolTarget) -> Decision:
    """Replicas this pool needs now: the largest ask of its signals, within [min_replicas, max_replicas].

    - demand: ceil(predicted tokens/s / (capacity x target_utilisation)); moves with the plan mix.
    - queue: ceil((running + waiting) / (max_concurrency x target_utilisation)), in replica capacities
      (the same normalisation as router/scaling.py: replicas that are down do not dilute it).
    - ttft_p95 / latency_p95: over its target by a ratio r > 1, ceil(replicas x min(r, 2)) and at least one more.
    - kv_cache: with a `kv_cache_usage_target`, over it: ceil(replicas x usage / target) (the KV in use, in
      replicas at the target usage).
    """
    u = target.target_utilisation
    by: dict[str, int] = {
        "demand": math.ceil(obs.demand_tokens_per_s / (target.capacity_tokens_per_s * u) - 1e-9),
        "queue": math.ceil((obs.running + obs.waiting) / (max(1, obs.max_concurrency) * u) - 1e-9),
    }
    for name, seen, goal in (("ttft_p95", obs.ttft_p95_ms, target.ttft_p95_ms),
                             ("latency_p95", obs.latency_p95_ms, target.latency_p95_ms)):
        if goal > 0 and seen > goal and obs.replicas > 0:
            ratio = min(seen / goal, 2.0)
            by[name] = max(obs.replicas + 1, math.ceil(obs.replicas * ratio))
    kv_goal = target.kv_cache_usage_target
    if kv_goal > 0 and obs.kv_cache_usage > kv_goal and obs.replicas > 0:
        by["kv_cache"] = math.ceil(obs.replicas * obs.kv_cache_usage / kv_goal - 1e-9)
    reason = max(by, key=lambda k: by[k])
    desired = by[reason]
    if desired < target.min_replicas:
        desired, reason = target.min_replicas, "min_replicas"
    elif desired > target.max_replicas:
        desired, reason = target.max_replicas, "max_replicas"
    return Decision(desired, reason, by)


def pool_target(c) -> PoolTarget:
    """A PoolTarget from one `autoscale.pools.<pool>` / `autoscale.default` entry (router/config.py's
    AutoscalePoolConfig, or anything with its fields)."""
    return PoolTarget(capacity_tokens_per_s=c.capacity_tokens_per_s, ttft_p95_ms=c.ttft_p95_ms,
                      latency_p95_ms=c.latency_p95_ms, min_replicas=c.min_replicas, max_replicas=c.max_replicas,
                      target_utilisation=c.target_utilisation,
                      kv_cache_usage_target=getattr(c, "kv_cache_usage_target", 0.0))


def pool_targets(autoscale, pools: Iterable[str]) -> dict[str, PoolTarget]:
    """`autoscale.pools.<pool>` (else `autoscale.default`) for each named pool (`autoscale`: AutoscaleConfig)."""
    return {pool: pool_target(autoscale.pools.get(pool, autoscale.default)) for pool in pools}


class PlanMix:
    """Plans chosen over the last `window_s` seconds and what each asks of each pool, per second.

    `priors`: {plan: {pool: generated tokens}} (e.g. the policy's `priors`), used until a plan's real usage is
    seen; after that an exponential average (weight `alpha` per finished request) of what it really used.
    A plan neither in the priors nor seen yet asks `default_tokens` of each of its pools.
    Called on the router's event loop (not thread-safe); O(plans chosen in the window) per read.
    """

    def __init__(self, priors: Mapping[str, Mapping[str, float]] | None = None, *, window_s: float = 20.0,
                 alpha: float = 0.2, default_tokens: float = 256.0, max_events: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s, self.alpha, self.default_tokens, self.clock = window_s, alpha, default_tokens, clock
        self.tokens: dict[str, dict[str, float]] = {p: dict(t) for p, t in (priors or {}).items()}
        self._pools: dict[str, tuple[str, ...]] = {}
        self._events: deque[tuple[float, str]] = deque(maxlen=max_events)

    def observe_plan(self, plan: str, pools: Iterable[str]) -> None:
        """A plan was chosen now for one request; `pools` are the pools it will call."""
        self._pools[plan] = tuple(dict.fromkeys(pools))
        self._events.append((self.clock(), plan))

    def observe_usage(self, plan: str, generated: Mapping[str, float]) -> None:
        """The plan finished; `generated`: generated tokens per pool it used."""
        est = self.tokens.setdefault(plan, {})
        for pool, n in generated.items():
            est[pool] = n if pool not in est else (1 - self.alpha) * est[pool] + self.alpha * n

    def _trim(self) -> None:
        horizon = self.clock() - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def plan_rate(self) -> dict[str, float]:
        """Plans per second by plan name over the window."""
        self._trim()
        counts: dict[str, int] = {}
        for _, plan in self._events:
            counts[plan] = counts.get(plan, 0) + 1
        return {p: n / self.window_s for p, n in counts.items()}

    def tokens_of(self, plan: str, pool: str) -> float:
        return self.tokens.get(plan, {}).get(pool, self.default_tokens)

    def pool_plan_rate(self) -> dict[str, float]:
        """Plans per second that call each pool."""
        out: dict[str, float] = {}
        for plan, rate in self.plan_rate().items():
            for pool in self._pools.get(plan, ()):
                out[pool] = out.get(pool, 0.0) + rate
        return out

    def demand(self) -> dict[str, float]:
        """Predicted generated tokens per second per pool: sum over plans of rate x tokens of the plan at the pool."""
        out: dict[str, float] = {}
        for plan, rate in self.plan_rate().items():
            for pool in self._pools.get(plan, ()):
                out[pool] = out.get(pool, 0.0) + rate * self.tokens_of(plan, pool)
        return out


class Autoscaler:
    """Desired replicas over time: up at once, down only when every ask of the last `downscale_delay_s`
    seconds was lower (a stabilisation window, as Kubernetes' HPA and Ray Serve's downscale delay do)."""

    def __init__(self, targets: Mapping[str, PoolTarget], downscale_delay_s: float = 60.0) -> None:
        self.targets = dict(targets)
        self.downscale_delay_s = downscale_delay_s
        self._asks: dict[str, deque[tuple[float, int]]] = {p: deque() for p in self.targets}

    def step(self, now: float, observations: Mapping[str, PoolObservation],
             current: Mapping[str, int]) -> dict[str, Decision]:
        """Decisions for each observed pool at time `now`; `current` = replicas each pool has (or is starting)."""
        out: dict[str, Decision] = {}
        for pool, obs in observations.items():
            d = desired_replicas(obs, self.targets[pool])
            asks = self._asks.setdefault(pool, deque())
            asks.append((now, d.desired))
            while asks and asks[0][0] < now - self.downscale_delay_s:
                asks.popleft()
            have = current.get(pool, obs.replicas)
            if d.desired < have:
                hold = min(have, max(n for _, n in asks))
                if hold > d.desired:
                    d = Decision(hold, f"{d.reason} (down held for {self.downscale_delay_s:g} s)", d.by_signal)
            out[pool] = d
        return out
