"""Prefix index in Redis: block hash -> the replicas that hold that block warm.

"Warm" means: in the replica's own vLLM prefix cache, recently. The connector's
scheduler side records every full prompt block a replica computed, loaded or reused
(`record`); the router's prefix scorer reads `longest_warm_prefix`. One Redis hash per
block, `trkvidx:<v>:<ns>:<hash>` = {replica_id: unix time last seen}, with a TTL
(`warm_ttl_s`) refreshed at each write; entries older than `warm_ttl_s` are ignored
by the reader (a replica that restarted or evicted the block stops attracting traffic
once its entries age out).

Both sides go through `RedisStore`, so a dead Redis reads as "nobody is warm".
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from workers.kv.keys import BlockHash, Namespace, index_key
from workers.kv.store import RedisStore


class PrefixIndex:
    def __init__(self, store: RedisStore, ns: Namespace, warm_ttl_s: int = 600, wall_clock: Callable[[], float] = time.time):
        self.store = store
        self.ns = ns
        self.warm_ttl_s = warm_ttl_s
        self._now = wall_clock

    def record(self, replica_id: str, hashes: Sequence[BlockHash]) -> bool:
        """Mark `replica_id` warm for these blocks (one pipelined round trip)."""
        if not hashes or not replica_id:
            return False
        now = str(int(self._now()))

        def w(c) -> bool:
            p = c.pipeline(transaction=False)
            for h in hashes:
                k = index_key(self.ns, h)
                p.hset(k, replica_id, now)
                p.expire(k, self.warm_ttl_s)
            p.execute()
            return True

        return bool(self.store.run("index-write", w, False))

    def longest_warm_prefix(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each replica warm on block 0, how many leading blocks it holds warm in a row.

        Replicas warm on no leading block are absent. One pipelined HGETALL round trip.
        """
        if not hashes:
            return {}
        self.store.stats.lookups += 1

        def q(c) -> list[dict]:
            p = c.pipeline(transaction=False)
            for h in hashes:
                p.hgetall(index_key(self.ns, h))
            return p.execute()

        rows = self.store.run("index-read", q, [])
        oldest = self._now() - self.warm_ttl_s
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
