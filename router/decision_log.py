"""The decision log: what the router decided per request, kept so that later feedback can join it.

    RouterCore.route -> Decision(request_id, tenant, task, plan, base logits, cost, latency, text) -> log.put
    POST /v1/feedback | Feedback RPC -> log.get(request_id) -> Outcome -> log.add_outcome -> every replica

Two stores with one interface: `RedisDecisionLog` (the deployment's Redis, shared by every router replica, so
feedback sent to any replica finds the decision; keys expire after `ttl_s` and at most `max_decisions` are kept)
and `MemoryDecisionLog` (one process; tests and Redis-less deployments). Outcomes (decision + verdict) are kept
in a capped list in the same store, read back at router start (and by other replicas, `outcomes_since`), so the
online correction survives a restart; `thinkroute train --from-log` turns them into a training file.

Redis keys: `thinkroute:decision:<request_id>` (JSON, TTL), `thinkroute:outcomes` (list of JSON, capped),
`thinkroute:outcomes:seq` (a counter: the index of the next outcome ever appended, so replicas can follow the
capped list). Values are data: JSON only, nothing executed, sizes bounded by config.
"""
from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

DECISION_PREFIX = "thinkroute:decision:"
OUTCOMES_KEY = "thinkroute:outcomes"
OUTCOMES_SEQ_KEY = "thinkroute:outcomes:seq"
#: Longest request id accepted (ids are client-visible strings; bounded before they become keys).
MAX_REQUEST_ID_CHARS = 128


@dataclass
class Decision:
    """One routing decision. `logits` are the policy's base logits of P(correct) per plan (before the online
    correction), so an outcome can update the correction without recomputing the query's features."""

    request_id: str
    plan: str
    tenant: str = ""
    task: str = ""
    strategy: str = ""
    models: dict[str, str] = field(default_factory=dict)
    features_key: str = ""   # sha256 of the rendered conversation (the hidden-state cache key)
    text: str = ""           # the rendered conversation, cut to feedback.max_text_chars
    logits: dict[str, float] = field(default_factory=dict)
    p_correct: dict[str, float] = field(default_factory=dict)   # corrected predictions the choice used
    predicted_cost: float = 0.0
    cost: float = 0.0        # USD, from the trace's usage and policy.prices
    latency_ms: float = 0.0
    dial: float = 0.0
    ts: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Decision":
        d = json.loads(raw)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Outcome:
    """A decision joined with its verdict: `y` in [0, 1] (a score, or 1/0 for correct/wrong)."""

    decision: Decision
    y: float
    task: str
    ts: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({"decision": asdict(self.decision), "y": self.y, "task": self.task, "ts": self.ts})

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Outcome":
        d = json.loads(raw)
        return cls(Decision(**{k: v for k, v in d["decision"].items() if k in Decision.__dataclass_fields__}),
                   float(d["y"]), str(d["task"]), float(d.get("ts", 0.0)))


class DecisionLog(ABC):
    """Store of decisions (by request id, expiring) and outcomes (append-only, capped). All methods are
    coroutines called on the router's event loop; store failures raise (the caller decides to degrade)."""

    @abstractmethod
    async def put(self, decision: Decision) -> None: ...

    @abstractmethod
    async def get(self, request_id: str) -> Decision | None:
        """The decision, or None when unknown or expired."""

    @abstractmethod
    async def add_outcome(self, outcome: Outcome) -> int:
        """Append; returns the outcome's sequence number (0, 1, ... over the store's life)."""

    @abstractmethod
    async def outcomes_since(self, seq: int) -> tuple[list[Outcome], int]:
        """Outcomes with sequence number >= `seq` still kept, and the next sequence number."""

    async def close(self) -> None:
        pass


class MemoryDecisionLog(DecisionLog):
    def __init__(self, ttl_s: float, max_decisions: int, max_outcomes: int, clock=time.time) -> None:
        self.ttl_s, self.max_decisions, self.max_outcomes, self.clock = ttl_s, max_decisions, max_outcomes, clock
        self._decisions: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self._outcomes: list[Outcome] = []
        self._seq = 0

    async def put(self, decision: Decision) -> None:
        self._decisions[decision.request_id] = (self.clock() + self.ttl_s, decision)
        self._decisions.move_to_end(decision.request_id)
        while len(self._decisions) > self.max_decisions:
            self._decisions.popitem(last=False)

    async def get(self, request_id: str) -> Decision | None:
        got = self._decisions.get(request_id)
        if got is None or got[0] < self.clock():
            return None
        return got[1]

    async def add_outcome(self, outcome: Outcome) -> int:
        self._outcomes.append(outcome)
        del self._outcomes[: max(0, len(self._outcomes) - self.max_outcomes)]
        self._seq += 1
        return self._seq - 1

    async def outcomes_since(self, seq: int) -> tuple[list[Outcome], int]:
        first = self._seq - len(self._outcomes)
        return self._outcomes[max(0, seq - first):], self._seq


class RedisDecisionLog(DecisionLog):
    """The shared store. The client is created lazily on the loop that uses it (redis.asyncio is loop-bound)."""

    def __init__(self, url: str, password_env: str | None, ttl_s: int, max_decisions: int, max_outcomes: int,
                 tls: bool = False, tls_ca_file: str | None = None, timeout_s: float = 1.0) -> None:
        self.url, self.password_env, self.tls, self.tls_ca_file = url, password_env, tls, tls_ca_file
        self.ttl_s, self.max_decisions, self.max_outcomes, self.timeout_s = ttl_s, max_decisions, max_outcomes, timeout_s
        self._client = None
        self._loop = None

    def _redis(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from workers.registration import async_redis

            self._client = async_redis(self.url, self.password_env, self.tls, self.tls_ca_file, self.timeout_s)
            self._loop = loop
        return self._client

    async def put(self, decision: Decision) -> None:
        r = self._redis()
        # TTL bounds age; allkeys-lru (the deployment's Redis) and the TTL bound the count in practice, and
        # max_decisions is enforced through a capped index of ids (oldest deleted first).
        async with r.pipeline(transaction=False) as p:
            p.set(DECISION_PREFIX + decision.request_id, json.dumps(asdict(decision)), ex=int(self.ttl_s))
            p.rpush(DECISION_PREFIX + "index", decision.request_id)
            p.llen(DECISION_PREFIX + "index")
            _, _, n = await p.execute()
        if n > self.max_decisions:
            extra = int(n) - self.max_decisions
            old = await r.lrange(DECISION_PREFIX + "index", 0, extra - 1)
            async with r.pipeline(transaction=False) as p:
                p.ltrim(DECISION_PREFIX + "index", extra, -1)
                if old:
                    p.delete(*[DECISION_PREFIX + (o.decode() if isinstance(o, bytes) else o) for o in old])
                await p.execute()

    async def get(self, request_id: str) -> Decision | None:
        raw = await self._redis().get(DECISION_PREFIX + request_id)
        return None if raw is None else Decision.from_json(raw)

    async def add_outcome(self, outcome: Outcome) -> int:
        r = self._redis()
        async with r.pipeline(transaction=True) as p:
            p.rpush(OUTCOMES_KEY, outcome.to_json())
            p.ltrim(OUTCOMES_KEY, -self.max_outcomes, -1)
            p.incr(OUTCOMES_SEQ_KEY)
            _, _, seq = await p.execute()
        return int(seq) - 1

    async def outcomes_since(self, seq: int) -> tuple[list[Outcome], int]:
        r = self._redis()
        async with r.pipeline(transaction=True) as p:
            p.get(OUTCOMES_SEQ_KEY)
            p.llen(OUTCOMES_KEY)
            nxt, n = await p.execute()
        nxt, n = int(nxt or 0), int(n)
        first = nxt - n  # sequence number of the oldest kept outcome
        start = max(0, seq - first)
        if start >= n:
            return [], nxt
        raw = await r.lrange(OUTCOMES_KEY, start, n - 1)
        out = []
        for x in raw:
            try:
                out.append(Outcome.from_json(x))
            except (ValueError, KeyError, TypeError):
                continue  # a malformed entry is skipped, never executed or trusted
        return out, first + start + len(raw)

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001
                pass
            self._client = None


def decision_log_from_config(config) -> DecisionLog:
    """The store `policy.feedback.store` names: Redis (`redis.url`, else the Redis `thinkroute serve` starts on
    `redis.port`; password from `redis.password_env`) or memory (also when `redis.enabled` is false)."""
    fb = config.policy.feedback
    if fb.store == "memory" or not config.redis.enabled:
        return MemoryDecisionLog(fb.ttl_s, fb.max_decisions, fb.max_outcomes)
    rc = config.redis
    url = rc.url or f"{'rediss' if rc.tls else 'redis'}://127.0.0.1:{rc.port}/0"
    return RedisDecisionLog(url, rc.password_env, fb.ttl_s, fb.max_decisions, fb.max_outcomes,
                            tls=rc.tls, tls_ca_file=rc.tls_ca_file)


def check_request_id(request_id: Any) -> str:
    """A request id as a bounded string (ValueError naming the bound otherwise)."""
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ValueError(f"request_id must be a non-empty string of at most {MAX_REQUEST_ID_CHARS} characters "
                         "(the `x-request-id` header / RouteResponse.request_id of the answer)")
    return request_id
