"""`Picker`: which replica takes a call. filter -> prepare -> score -> pick -> reserve.

    replica = await picker.pick(model, exclude, prompt, deadline)   # replica.inflight already + 1
    ...                                                              # the Caller releases it

1. filter: the ReplicaSet's candidates (healthy, not marked down, not already tried).
2. prepare (only with two or more candidates): what scorers need from the network, awaited: the
   prompt's token ids (when a scorer needs them), each candidate's Info (replica id, KV namespace),
   each scorer's own `prepare` (the prefix index read). Skipped - no Tokenize call, no Redis read -
   when the ids cannot change the pick (`_skip_reason`, exact, checked with no await before the
   pick): every scorer that needs ids names a reason its scores are fixed without them (the prefix
   scorer's `skip_reason`: no Redis, circuit open, pool imbalanced, no KV namespace, ...), or the
   scorers that need no ids already separate the best replica from every other by more than the
   summed weights of those that do (e.g. the session scorer at weight 4 over load 1 + prefix 2).
3. score, pick and reserve, with no await in between: the in-flight counts are read right here, the
   weighted sum of the scorers picks the best (random tie-break) and its `inflight` is incremented
   before `pick` returns. So a burst of concurrent requests for one hot prefix sees each other's
   reservations: the prefix scorer's imbalance rule spreads them instead of herding them onto the
   warm replica (the reservation used to happen after the awaits, on a count read before them).
"""
from __future__ import annotations

import random
import time
from collections import Counter
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
        #: Picks that needed no prompt ids, by reason (`_skip_reason`); `tokenized`: picks that did tokenize.
        self.prompt_ids_skipped: Counter[str] = Counter()

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
            # The candidates the scores are for: filtered again after any await (replicas may have failed,
            # left or been tried meanwhile); unchanged when nothing was awaited (a skip checked on them).
            candidates = await self._prepare(model, candidates, request, prompt, deadline, exclude)
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
                       prompt: PromptInput | None, deadline: float | None, exclude: set[str]) -> list[Replica]:
        if "session" not in request.extra:
            request.extra["session"] = sessions.current()
        if prompt is None or not self.needs_prompt_ids or self.tokenize is None:
            return candidates
        reason = self._skip_reason(candidates, request)  # before any await: no Info, no Tokenize, no Redis
        if reason is None:
            infos = {r.address: await self.replicas.describe(r) for r in candidates}  # cached after the first answer
            request.extra["replica_ids"] = {a: (i.replica_id if i is not None and i.replica_id else a)
                                            for a, i in infos.items()}
            request.extra["kv_namespaces"] = {a: (i.kv_namespace if i is not None and i.HasField("kv_namespace") else None)
                                              for a, i in infos.items()}
            candidates = self._live(model, exclude) or candidates
            reason = self._skip_reason(candidates, request)
        if reason is not None:
            request.extra["prompt_ids_skipped"] = reason
            self.prompt_ids_skipped[reason] += 1
            return candidates
        self.prompt_ids_skipped["tokenized"] += 1
        request.prompt_ids = await self.tokenize(model, prompt, deadline or time.monotonic() + 10)
        for scorer, _ in self.scorers:
            prepare = getattr(scorer, "prepare", None)
            if prepare is not None:
                await prepare(request)
        return self._live(model, exclude) or candidates

    def _skip_reason(self, candidates: list[Replica], request: PickRequest) -> str | None:
        """Why the prompt's ids cannot change the pick among `candidates` at their in-flight counts now, or None.

        Exact for the scoring rule in `pick` (weighted sum of scores clamped to [0, 1], best wins): (a) every
        scorer that needs ids gives a reason (`skip_reason`) why its scores are the same without them; or (b) the
        scorers that need none put one replica ahead of every other by more than the summed |weight| of those
        that do, which can add at most that much to any replica. The caller checks with no await until the pick."""
        if len(candidates) < 2:
            return "one_candidate"
        request.inflight = {r.address: r.inflight for r in candidates}
        addresses = [r.address for r in candidates]
        reasons = []
        for scorer, _ in self.scorers:
            if scorer.needs_prompt_ids:
                skip = getattr(scorer, "skip_reason", None)
                reasons.append(skip(addresses, request) if skip is not None else None)
        if reasons and all(reasons):
            return "+".join(sorted(set(reasons)))
        totals = {a: 0.0 for a in addresses}
        dynamic = 0.0
        for scorer, weight in self.scorers:
            if scorer.needs_prompt_ids:
                dynamic += abs(weight)
                continue
            for address, sc in scorer.score(addresses, request).items():
                if address in totals:
                    totals[address] += weight * min(1.0, max(0.0, sc))
        ranked = sorted(totals.values(), reverse=True)
        if len(ranked) > 1 and ranked[0] - ranked[1] > dynamic + 1e-9:  # margin kept clear of float rounding
            return "decided_without_ids"
        return None
