"""Replica scorers for the worker pool: each gives every candidate replica a score in [0, 1].

The pool (router/pool.py) filters replicas, sums `score * weight` over the configured scorers
and picks the best (random tie-break). Adding a scorer = one class with `name`,
`needs_prompt_ids` and `score(...)`, plus one line in `build_scorer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class PickRequest:
    """What scorers may look at: the model, the replicas' router-side load, the prompt's ids (when a
    scorer needs them, the pool tokenizes first)."""

    model: str
    inflight: dict[str, int]
    prompt_ids: list[int] | None = None
    extra: dict = field(default_factory=dict)


class ReplicaScorer(Protocol):
    name: str
    needs_prompt_ids: bool

    def score(self, replicas: list[str], request: PickRequest) -> dict[str, float]: ...


class LeastLoadScorer:
    """1 for an idle replica, falling linearly to 0 at `saturation` requests in flight."""

    name = "load"
    needs_prompt_ids = False

    def __init__(self, saturation: int = 32) -> None:
        self.saturation = max(1, saturation)

    def score(self, replicas: list[str], request: PickRequest) -> dict[str, float]:
        return {r: max(0.0, 1.0 - request.inflight.get(r, 0) / self.saturation) for r in replicas}


def build_scorer(name: str, params: dict) -> ReplicaScorer:
    if name == "load":
        return LeastLoadScorer(**params)
    if name == "prefix":
        from router.scorers.prefix import PrefixAffinityScorer  # Redis prefix index (tracker issue 8)

        return PrefixAffinityScorer(**params)
    raise ValueError(f"unknown replica scorer {name!r}; available scorers are ['load', 'prefix']")
