"""Prefix-affinity scorer: prefer the replica that holds the prompt's prefix warm, unless that
would pile load onto it.

Called by the worker pool once per request, on the request path (one Redis round trip: a
pipelined HGETALL over the prompt's full blocks, see workers/kv/index.py):

    score(replicas, prompt_ids, loads) -> {replica: score in [0, 1]}

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


class PrefixAffinityScorer:
    """Scores replicas of one model pool; `ns` must equal the replicas' connector namespace."""

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
        lo, hi = min(load), max(load)
        load_score = {r: 1.0 if hi == lo else (hi - l) / (hi - lo) for r, l in zip(replicas, load)}
        if self.imbalanced(load):
            return load_score
        hashes = block_hashes(prompt_ids, self.ns, salt=salt)
        if not hashes:
            return load_score
        warm = self.index.longest_warm_prefix(hashes)
        match = {r: min(1.0, warm.get(r, 0) / len(hashes)) for r in replicas}
        if max(match.values()) < self.cfg.match_threshold:
            return load_score
        w = self.cfg.load_weight
        return {r: (1 - w) * match[r] + w * load_score[r] for r in replicas}
