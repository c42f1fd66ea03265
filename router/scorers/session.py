"""Session-affinity replica scorer: the turns of one agent session go to one replica.

The session key of the request being routed comes from `router.sessions.current()` (bound by the
planner). Among the candidate replicas, the one with the highest rendezvous hash
`sha256(key | address)` scores 1 and the others 0; without a key every replica scores 0 (the
other scorers decide). Rendezvous hashing needs no table: every router replica computes the
same pick, a replica that is down or already tried only moves the sessions it held (to each
one's next-highest replica), and sessions spread evenly over replicas.

Load still wins when it must: if the session's replica has more than `spill_gap` requests in
flight above the idlest candidate, all scores are 0 and the load scorer spreads the turn.
Give this scorer a weight above the sum of the others' (e.g. 4 with load 1 and prefix 2) so
that affinity decides whenever the pool is balanced.

Config (`router.scorers`): `{name: session, weight: 4.0, params: {spill_gap: 8, max_sessions:
10000, ttl_s: 3600, pin_plans: true}}`; the last three size the planner's plan pins
(router/sessions.py). Removing the entry turns session affinity off (plans and replicas).
"""
from __future__ import annotations

import hashlib

from router import sessions
from router.scorers import PickRequest


def rendezvous_order(key: str, replicas: list[str]) -> list[str]:
    """`replicas` ordered by rendezvous hash for `key`, the preferred one first (deterministic)."""
    def weight(replica: str) -> bytes:
        return hashlib.sha256(f"{key}|{replica}".encode("utf-8", "surrogatepass")).digest()

    return sorted(replicas, key=weight, reverse=True)


class SessionAffinityScorer:
    """1 for the session's rendezvous replica, 0 for the rest; all 0 without a session or when
    the session's replica is `spill_gap` requests busier than the idlest candidate."""

    name = "session"
    needs_prompt_ids = False

    def __init__(self, spill_gap: int = 8, max_sessions: int = 10_000, ttl_s: float = 3600.0,
                 pin_plans: bool = True) -> None:
        if spill_gap < 0:
            raise ValueError(f"session scorer: spill_gap must be >= 0 requests, got {spill_gap}")
        self.spill_gap = spill_gap
        # max_sessions, ttl_s and pin_plans configure the planner's SessionPins (read there).

    def score(self, replicas: list[str], request: PickRequest) -> dict[str, float]:
        key = request.extra.get("session") or sessions.current()
        scores = {r: 0.0 for r in replicas}
        if not key or not replicas:
            return scores
        preferred = rendezvous_order(key, replicas)[0]
        lowest = min(request.inflight.get(r, 0) for r in replicas)
        if request.inflight.get(preferred, 0) - lowest > self.spill_gap:
            return scores
        scores[preferred] = 1.0
        return scores
