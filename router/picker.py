"""`Picker`: which replica takes a call. filter -> prepare -> score -> pick -> reserve.

    replica = await picker.pick(model, exclude, prompt, deadline)   # replica.inflight already + 1
    ...                                                              # the Caller releases it

1. filter: the ReplicaSet's candidates (healthy, not marked down, not already tried).
2. prepare (only with two or more candidates): what scorers need from the network, awaited: the
   prompt's token ids (when a scorer needs them), each candidate's Info (replica id, KV namespace),
   each scorer's own `prepare` (the prefix index read).
3. score, pick and reserve, with no await in between: the in-flight counts are read right here, the
   weighted sum of the scorers picks the best (random tie-break) and its `inflight` is incremented
   before `pick` returns. So a burst of concurrent requests for one hot prefix sees each other's
   reservations: the prefix scorer's imbalance rule spreads them instead of herding them onto the
   warm replica (the reservation used to happen after the awaits, on a count read before them).
"""
from __future__ import annotations

import random
import time
from typing import Awaitable, Callable

from router import sessions
from router.errors import NoReplica
from router.replicas import Replica, ReplicaSet
from router.scorers import LeastLoadScorer, PickRequest, ReplicaScorer
from workers.types import PromptInput

Tokenize = Callable[[str, PromptInput, float], Awaitable[list[int]]]


class Picker:
    def __init__(self, replicas: ReplicaSet, scorers: list[tuple[ReplicaScorer, float]] | None = None,
                 tokenize: Tokenize | None = None, rng: random.Random | None = None) -> None:
        """`tokenize(model, prompt, deadline)` gives the prompt's ids (the pool's cached Tokenize call)."""
        self.replicas = replicas
        self.scorers = scorers or [(LeastLoadScorer(), 1.0)]
        self.tokenize = tokenize
        self.rng = rng or random.Random()

    @property
    def needs_prompt_ids(self) -> bool:
        return any(s.needs_prompt_ids for s, _ in self.scorers)

    def _live(self, model: str, exclude: set[str]) -> list[Replica]:
        return self.replicas.candidates(model, exclude)

    async def pick(self, model: str, exclude: set[str] | None = None, prompt: PromptInput | None = None,
                   deadline: float | None = None, extra: dict | None = None) -> Replica:
        """A reserved replica of `model` (its `inflight` incremented; release it when the call ends).
        Raises NotFound for an unknown model, NoReplica when no candidate is left."""
        exclude = exclude or set()
        candidates = self._live(model, exclude)
        if not candidates:
            raise NoReplica(f"no healthy replica of model {model!r} is available "
                            f"({len(self.replicas.pool(model))} known, all unhealthy, down or already tried)")
        request = PickRequest(model=model, inflight={}, extra=dict(extra or {}))
        if len(candidates) > 1:
            await self._prepare(model, candidates, request, prompt, deadline)
            # The awaits above may have seen replicas fail, leave or be tried: filter again.
            candidates = self._live(model, exclude) or candidates
        # -- from here to the reservation: no await (concurrent picks see each other's reservations) --
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            request.inflight = {r.address: r.inflight for r in candidates}
            totals = {r.address: 0.0 for r in candidates}
            for scorer, weight in self.scorers:
                for address, s in scorer.score(list(totals), request).items():
                    if address in totals:
                        totals[address] += weight * min(1.0, max(0.0, s))
            best = max(totals.values())
            chosen = self.rng.choice([r for r in candidates if totals[r.address] == best])
        chosen.inflight += 1
        return chosen

    async def _prepare(self, model: str, candidates: list[Replica], request: PickRequest,
                       prompt: PromptInput | None, deadline: float | None) -> None:
        if "session" not in request.extra:
            request.extra["session"] = sessions.current()
        if prompt is None or not self.needs_prompt_ids or self.tokenize is None:
            return
        request.prompt_ids = await self.tokenize(model, prompt, deadline or time.monotonic() + 10)
        infos = {r.address: await self.replicas.describe(r) for r in candidates}
        request.extra["replica_ids"] = {a: (i.replica_id if i is not None and i.replica_id else a)
                                        for a, i in infos.items()}
        request.extra["kv_namespaces"] = {a: (i.kv_namespace if i is not None and i.HasField("kv_namespace") else None)
                                          for a, i in infos.items()}
        for scorer, _ in self.scorers:
            prepare = getattr(scorer, "prepare", None)
            if prepare is not None:
                await prepare(request)
