"""How many replicas a model pool needs, from what its healthy replicas report.

    desired_replicas(loads, configured, target_utilisation) -> int

Demand is counted in replica-equivalents: (running + queued requests over the healthy replicas) divided
by one replica's capacity (the mean `max_concurrency` of the healthy ones); the pool needs
ceil(demand / target_utilisation) replicas, at least 1. Replicas that are down do not dilute the
demand: 2 of 4 replicas healthy, each 50 % busy, is one replica's worth of work, so 2 replicas at a
0.7 target (the old formula, `ceil(configured x busy / target)` with busy normalised by healthy
capacity only, asked for 3). With no healthy replica the demand is unknown: the configured count is
kept. Queue-driven only; a pool's predicted demand from the plan mix (coupled scaling) is added by
the caller where it has one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ReplicaLoad:
    """One healthy replica's last report (the worker's `Load` RPC)."""

    running: int
    queued: int
    max_concurrency: int


def demand_replicas(loads: Sequence[ReplicaLoad]) -> float:
    """Requests in flight over the healthy replicas, in units of one replica's capacity (0 when none)."""
    if not loads:
        return 0.0
    per_replica = sum(max(1, l.max_concurrency) for l in loads) / len(loads)
    return sum(l.running + l.queued for l in loads) / per_replica


def desired_replicas(loads: Sequence[ReplicaLoad], configured: int, target_utilisation: float = 0.7) -> int:
    """Replicas that would run the healthy replicas' current demand at `target_utilisation` (in (0, 1])."""
    if not 0 < target_utilisation <= 1:
        raise ValueError(f"target_utilisation must be in (0, 1], got {target_utilisation}")
    if not loads:
        return max(1, configured)
    # 1e-9: a demand of exactly k x target is k replicas, not k + 1 from floating-point noise.
    return max(1, math.ceil(demand_replicas(loads) / target_utilisation - 1e-9))
