"""Replica scorers for the worker pool: each gives every candidate replica a score in [0, 1].

The Picker (router/picker.py) filters replicas, lets scorers that have one run their async
`prepare(request)` (network reads: the prefix index), then, with no await in between, reads the
replicas' in-flight counts, sums `score * weight` over the configured scorers, picks the best (random
tie-break) and reserves it. Adding a scorer = one class with `name`, `needs_prompt_ids`,
`score(...)` (pure, synchronous) and optionally `prepare(...)`, plus one line in `build_scorer`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("thinkroute.router.scorers")


@dataclass
class PickRequest:
    """What scorers may look at: the model, the replicas' router-side load (filled in right before
    `score`), the prompt's ids (when a scorer needs them, the picker tokenizes first), and `extra`:
    `replica_ids` and `kv_namespaces` (address -> the worker's Info values), `cache_salt`, `session`,
    and whatever a scorer's `prepare` stores for its `score`."""

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


class PoolPrefixScorer:
    """Adapts the prefix-affinity rule (router/scorers/prefix.py, Redis prefix index) to the pool.

    `prepare` (async, before the pick): hashes the prompt in each candidate's published KV namespace
    (`Info.kv_namespace`; a replica without one has no shared cache and matches nothing) and reads the
    index on redis.asyncio within `timeout_s` (default 50 ms); Redis down or slow = no match, so the
    pick is load-only, and Redis is skipped for `retry_after_s`. `score` (sync) applies the rule to the
    loads at pick time. Only runs when a model has two or more candidate replicas.
    """

    name = "prefix"
    needs_prompt_ids = True
    #: Knobs of the old constant namespace; the workers publish theirs now. Accepted, ignored.
    LEGACY_KEYS = ("block_size", "dtype", "layout")

    def __init__(self, redis_url: str | None = None, password_env: str | None = None, tls: bool = False,
                 tls_ca_file: str | None = None, timeout_s: float = 0.05, retry_after_s: float = 2.0,
                 warm_ttl_s: int = 600, **knobs) -> None:
        from router.scorers.prefix import AsyncWarmIndex, PrefixScorerConfig

        legacy = [k for k in self.LEGACY_KEYS if k in knobs]
        for k in legacy:
            knobs.pop(k)
        if legacy:
            log.warning("prefix scorer: params %s are ignored: the KV namespace comes from the workers' Info", legacy)
        if not 0 < timeout_s <= 1.0:
            raise ValueError(f"prefix scorer: timeout_s must be in (0, 1] seconds, got {timeout_s}")
        self.redis_url = redis_url
        self.knobs = PrefixScorerConfig(**knobs)
        # Redis auth and TLS: the password is read from $password_env when the client is built, never passed in.
        self.index = AsyncWarmIndex(redis_url, password_env, tls, tls_ca_file, timeout_s=timeout_s,
                                    retry_after_s=retry_after_s, warm_ttl_s=warm_ttl_s) if redis_url else None

    def skip_reason(self, replicas: list[str], request: PickRequest) -> str | None:
        """Why the prompt's ids (the Tokenize call) and the Redis read cannot change this scorer's scores of
        `replicas` now, or None when they might. Exact, from `score`'s rule, for the loads in
        `request.inflight` (the picker checks with no await before the pick, so these are the pick's loads):

        - `no_redis`: no index configured: every score is 0 whatever the prompt;
        - `load_weight_1`: `load_weight` 1: the balanced score is the load score, as without a match;
        - `redis_circuit_open`: a recent Redis failure: `prepare` would not read it (no match, load score);
        - `imbalanced`: the imbalance test holds: the load score, whatever the match;
        - `no_kv_namespace` (once `kv_namespaces` is known): no candidate publishes a usable namespace, so
          nothing can match (load score).
        With a reason, `score` returns exactly what it returns after a read that matched nothing."""
        if self.index is None:
            return "no_redis"
        if self.knobs.load_weight >= 1.0:
            return "load_weight_1"
        circuit_open = getattr(self.index, "circuit_open", None)
        if circuit_open is not None and circuit_open():
            return "redis_circuit_open"
        load = [max(0, int(request.inflight.get(r, 0))) for r in replicas]
        if load:
            lo, hi = min(load), max(load)
            if hi - lo > self.knobs.balance_abs_threshold and hi > self.knobs.balance_rel_threshold * lo:
                return "imbalanced"
        spaces = request.extra.get("kv_namespaces")
        if spaces is not None and not any(_usable(spaces.get(r)) for r in replicas):
            return "no_kv_namespace"
        return None

    async def prepare(self, request: PickRequest) -> None:
        """Store `prefix_match` (address -> warm fraction of the prompt's blocks) in `request.extra`, or nothing."""
        from workers.kv.keys import Namespace, block_hashes

        if self.index is None or request.prompt_ids is None:
            return
        ids: dict[str, str] = request.extra.get("replica_ids", {})
        spaces: dict[str, object] = request.extra.get("kv_namespaces", {})
        by_ns: dict[Namespace, list[str]] = {}
        for address, pb_ns in spaces.items():
            if not _usable(pb_ns):
                continue
            ns = Namespace(model_id=pb_ns.model_id, dtype=pb_ns.dtype, block_size=pb_ns.block_size,
                           layout=pb_ns.layout, version=pb_ns.version)
            by_ns.setdefault(ns, []).append(address)
        match: dict[str, float] = {}
        salt = request.extra.get("cache_salt") or None
        for ns, addresses in by_ns.items():
            hashes = block_hashes(request.prompt_ids, ns, salt=salt)
            if not hashes:
                continue
            warm = await self.index.longest_warm_prefix(ns, hashes)
            if warm is None:
                return  # Redis unavailable: no affinity at all (load-only), not a partial view
            for a in addresses:
                match[a] = min(1.0, warm.get(ids.get(a, a), 0) / len(hashes))
        request.extra["prefix_match"] = match

    def score(self, replicas: list[str], request: PickRequest) -> dict[str, float]:
        from router.scorers.prefix import affinity_scores

        if self.index is None:
            return {r: 0.0 for r in replicas}
        if request.prompt_ids is None:
            if not request.extra.get("prompt_ids_skipped"):
                return {r: 0.0 for r in replicas}  # a call without a prompt (Tokenize, HiddenState, Info)
            return affinity_scores(replicas, None, request.inflight, self.knobs)  # = a read that matched nothing
        return affinity_scores(replicas, request.extra.get("prefix_match"), request.inflight, self.knobs)


def _usable(pb_ns: object) -> bool:
    """A published KvNamespace the prompt can be hashed in (None: the replica has no shared cache)."""
    return pb_ns is not None and bool(pb_ns.block_size) and bool(pb_ns.model_id)


def build_scorer(name: str, params: dict) -> ReplicaScorer:
    """The scorer named in config (`router.scorers[].name`) with its `params`."""
    if name == "load":
        return LeastLoadScorer(**params)
    if name == "prefix":
        return PoolPrefixScorer(**params)
    if name == "session":
        from router.scorers.session import SessionAffinityScorer

        return SessionAffinityScorer(**params)
    raise ValueError(f"unknown replica scorer {name!r}; available scorers are ['load', 'prefix', 'session']")
