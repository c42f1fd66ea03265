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


class PoolPrefixScorer:
    """Adapts `router.scorers.prefix.PrefixAffinityScorer` (Redis prefix index, tracker issue 8) to the
    pool: one namespace per model (it must equal the workers' KV-connector namespace), replica ids
    (what the connectors write into the index) mapped from the pool's addresses.

    NOTE: the index read is one pipelined round trip to Redis on the request path, synchronous,
    with the store's short socket timeout; Redis down makes it a fast miss (load-only scoring).
    It only runs when a model has two or more candidate replicas.
    """

    name = "prefix"
    needs_prompt_ids = True

    def __init__(self, redis_url: str | None = None, block_size: int = 128, dtype: str = "float32",
                 layout: str = "cpu:blocks-first", password_env: str | None = None, tls: bool = False,
                 tls_ca_file: str | None = None, **knobs) -> None:
        from router.scorers.prefix import PrefixScorerConfig

        self.redis_url, self.block_size, self.dtype, self.layout = redis_url, block_size, dtype, layout
        # Redis auth and TLS: the password is read from $password_env when the client is built, never passed in.
        self.password_env, self.tls, self.tls_ca_file = password_env, tls, tls_ca_file
        self.knobs = PrefixScorerConfig(**knobs)
        self._scorers: dict[str, object] = {}

    def _scorer(self, model: str):
        if model not in self._scorers:
            from router.scorers.prefix import PrefixAffinityScorer
            from workers.kv.index import PrefixIndex
            from workers.kv.keys import Namespace
            from workers.kv.store import RedisStore, StoreConfig

            ns = Namespace(model_id=model, dtype=self.dtype, block_size=self.block_size, layout=self.layout)
            index = PrefixIndex(RedisStore(StoreConfig(url=self.redis_url, socket_timeout_s=0.05, password_env=self.password_env,
                                                       tls=self.tls, tls_ca_file=self.tls_ca_file)), ns)
            self._scorers[model] = PrefixAffinityScorer(index, ns, self.knobs)
        return self._scorers[model]

    def score(self, replicas: list[str], request: PickRequest) -> dict[str, float]:
        ids = request.extra.get("replica_ids", {})
        if not self.redis_url or request.prompt_ids is None or not ids:
            return {r: 0.0 for r in replicas}
        by_id = {ids.get(r, r): r for r in replicas}
        loads = {ids.get(r, r): n for r, n in request.inflight.items()}
        # A salted request (its tenant's cache salt, when the pool passes it) sees only warm entries of its salt.
        scores = self._scorer(request.model).score(list(by_id), request.prompt_ids, loads,
                                                   salt=request.extra.get("cache_salt") or None)
        return {by_id[rid]: s for rid, s in scores.items()}


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
