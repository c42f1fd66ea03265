"""Prefix-affinity scorer: prefer the replica that holds the prompt's prefix warm, unless that
would pile load onto it.

Called by the worker pool once per request, on the request path, in two steps (router/picker.py):
the async read of the index (`AsyncWarmIndex`: one pipelined HGETALL over the prompt's full blocks on
redis.asyncio, bounded by `timeout_s`; Redis slow or down = no match, i.e. load-only picking, and an
open circuit for `retry_after_s`), then the pure rule below on the loads of that moment:

    affinity_scores(replicas, match, loads, cfg) -> {replica: score in [0, 1]}

The prompt is hashed in the namespace the workers publish in `Info.kv_namespace` (the one their KV
connectors write the index in), never one rebuilt from the pool's name.

The rule (knobs in `PrefixScorerConfig`):

1. Imbalance check. With min/max the lowest/highest load (in-flight requests) among the
   candidates, the pool is *imbalanced* when both
   `max - min > balance_abs_threshold` and `max > balance_rel_threshold * min` hold.
   Imbalanced -> cache is ignored; score = load score (below), so traffic spreads.
2. Balanced -> match_r = warm leading blocks on r / full blocks in the prompt (0..1).
   If no replica reaches `match_threshold`, score = load score (no useful affinity).
   Otherwise score = (1 - load_weight) * match_r + load_weight * load_r.
3. load_r = (max - load_r) / (max - min), or 1 when all loads are equal.

Ray Serve LLM's PrefixCacheAffinityRouter does the same two-step: if the queue-length spread
exceeds `imbalanced_threshold` it load-balances (power of two choices), else it routes to the
highest prefix match rate when that is >= 10 % and otherwise to the least-cached replica.
SGLang's cache-aware router checks imbalance with *both* an absolute and a relative threshold
(`--balance-abs-threshold`, `--balance-rel-threshold`) and uses affinity only above
`--cache-threshold`; we copy that two-threshold test, because an absolute gap alone
over-reacts at low load (2 vs 0 requests) and a ratio alone over-reacts at tiny counts.
Unlike both, which keep an approximate radix tree of the text each replica was *sent*, our
index is written by the replicas' own KV connectors (blocks they actually computed or
loaded), keyed by the same chained block hashes as the Redis KV cache.

Defaults are sized for this CPU deployment (max_num_seqs=32): a replica 8+ requests and
1.5x busier than the idlest one stops attracting affinity traffic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

from workers.kv.keys import BlockHash, Namespace, block_hashes


class WarmIndex(Protocol):
    def longest_warm_prefix(self, hashes: Sequence[BlockHash]) -> dict[str, int]: ...


@dataclass
class PrefixScorerConfig:
    balance_abs_threshold: int = 8
    """Load gap (requests) above which, together with the relative test, the pool is imbalanced."""
    balance_rel_threshold: float = 1.5
    """max load > this x min load (with the absolute test) means imbalanced."""
    match_threshold: float = 0.1
    """Minimum warm fraction of the prompt's blocks for affinity to count (Ray Serve uses 10 %)."""
    load_weight: float = 0.2
    """Share of the load score in a balanced pool: breaks ties between equally warm replicas."""

    def __post_init__(self) -> None:
        if self.balance_abs_threshold < 0:
            raise ValueError(f"balance_abs_threshold must be >= 0 requests, got {self.balance_abs_threshold}")
        if self.balance_rel_threshold < 1.0:
            raise ValueError(f"balance_rel_threshold must be >= 1.0, got {self.balance_rel_threshold}")
        if not 0.0 <= self.match_threshold <= 1.0 or not 0.0 <= self.load_weight <= 1.0:
            raise ValueError(f"match_threshold and load_weight must be in [0, 1], got {self.match_threshold}, {self.load_weight}")


def affinity_scores(replicas: list[str], match: dict[str, float] | None, loads: dict[str, int],
                    cfg: PrefixScorerConfig) -> dict[str, float]:
    """The rule of the module docstring: `match[r]` is r's warm fraction of the prompt's blocks (None = unknown)."""
    if not replicas:
        return {}
    load = [max(0, int(loads.get(r, 0))) for r in replicas]
    lo, hi = min(load), max(load)
    load_score = {r: 1.0 if hi == lo else (hi - l) / (hi - lo) for r, l in zip(replicas, load)}
    if hi - lo > cfg.balance_abs_threshold and hi > cfg.balance_rel_threshold * lo:  # imbalanced
        return load_score
    if not match or max(match.get(r, 0.0) for r in replicas) < cfg.match_threshold:
        return load_score
    w = cfg.load_weight
    return {r: (1 - w) * min(1.0, match.get(r, 0.0)) + w * load_score[r] for r in replicas}


def warm_run(rows: Sequence[dict], oldest: float) -> dict[str, int]:
    """From the index rows of blocks 0, 1, ... (replica -> last-seen time): for each replica warm on
    block 0, how many leading blocks it holds warm in a row (entries older than `oldest` do not count)."""
    run: dict[str, int] = {}
    alive: set[str] | None = None
    for i, row in enumerate(rows):
        fresh = {r.decode() if isinstance(r, bytes) else r for r, t in row.items() if float(t) >= oldest}
        alive = fresh if alive is None else alive & fresh
        if not alive:
            break
        for r in alive:
            run[r] = i + 1
    return run


async def _close_quietly(client) -> None:
    try:
        await client.aclose()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


class AsyncWarmIndex:
    """The prefix index (written by the workers' connectors, workers/kv/index.py), read on redis.asyncio.

    `longest_warm_prefix(ns, hashes)` never raises and never blocks the event loop: a read slower than
    `timeout_s`, or any Redis error, is None (no affinity) and skips Redis for `retry_after_s`."""

    def __init__(self, url: str, password_env: str | None = None, tls: bool = False, tls_ca_file: str | None = None,
                 timeout_s: float = 0.05, retry_after_s: float = 2.0, warm_ttl_s: int = 600,
                 clock=time.monotonic, wall_clock=time.time) -> None:
        self.url, self.password_env, self.tls, self.tls_ca_file = url, password_env, tls, tls_ca_file
        self.timeout_s, self.retry_after_s, self.warm_ttl_s = timeout_s, retry_after_s, warm_ttl_s
        self._clock, self._wall = clock, wall_clock
        self._client = None
        self._loop = None
        self._open_until = 0.0
        self.errors = 0

    def _redis(self):
        import asyncio

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from workers.registration import async_redis

            self._client = async_redis(self.url, self.password_env, self.tls, self.tls_ca_file,
                                       timeout_s=max(self.timeout_s, 0.05))
            self._loop = loop
        return self._client

    def circuit_open(self) -> bool:
        """True while a recent failure keeps Redis skipped (`longest_warm_prefix` answers None without reading)."""
        return self._clock() < self._open_until

    async def longest_warm_prefix(self, ns: Namespace, hashes: Sequence[BlockHash]) -> dict[str, int] | None:
        import asyncio

        from workers.kv.keys import index_key

        if not hashes:
            return {}
        if self.circuit_open():
            return None
        try:
            client = self._redis()

            async def read():
                p = client.pipeline(transaction=False)
                for h in hashes:
                    p.hgetall(index_key(ns, h))
                return await p.execute()

            rows = await asyncio.wait_for(read(), self.timeout_s)
        except Exception:  # noqa: BLE001 - Redis slow/down/auth: no affinity, load-only picking
            self.errors += 1
            self._open_until = self._clock() + self.retry_after_s
            old, self._client = self._client, None  # a timed-out pipeline leaves the connection unusable
            if old is not None:
                asyncio.ensure_future(_close_quietly(old))
            return None
        return warm_run(rows, self._wall() - self.warm_ttl_s)


class PrefixAffinityScorer:
    """Scores replicas of one model pool; `ns` must equal the replicas' connector namespace
    (synchronous index: offline use and tests; the pool uses `AsyncWarmIndex` + `affinity_scores`)."""

    name = "prefix"

    def __init__(self, index: WarmIndex, ns: Namespace, config: PrefixScorerConfig | None = None):
        self.index = index
        self.ns = ns
        self.cfg = config or PrefixScorerConfig()

    def imbalanced(self, loads: Sequence[int]) -> bool:
        lo, hi = min(loads), max(loads)
        return hi - lo > self.cfg.balance_abs_threshold and hi > self.cfg.balance_rel_threshold * lo

    def score(self, replicas: list[str], prompt_ids: list[int], loads: dict[str, int],
              salt: str | None = None) -> dict[str, float]:
        """`salt`: the request's cache salt (its tenant's); warm entries of other salts are invisible."""
        if not replicas:
            return {}
        load = [max(0, int(loads.get(r, 0))) for r in replicas]
        hashes = [] if self.imbalanced(load) else block_hashes(prompt_ids, self.ns, salt=salt)
        match = None
        if hashes:
            warm = self.index.longest_warm_prefix(hashes)
            match = {r: min(1.0, warm.get(r, 0) / len(hashes)) for r in replicas}
        return affinity_scores(replicas, match, loads, self.cfg)
