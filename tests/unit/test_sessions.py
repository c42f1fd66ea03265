"""Session keys, plan pins and the session-affinity replica scorer (pure logic, no workers)."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from router import sessions
from router.config import load_config
from router.errors import InvalidRoute
from router.planner import DialStore, Plan, Planner
from router.pool import WorkerPool
from router.scorers import LeastLoadScorer, PickRequest, build_scorer
from router.scorers.session import SessionAffinityScorer, rendezvous_order
from router.strategies import get_strategy
from router.types import RouteQuery
from workers.types import ChatMessage

SYSTEM = ChatMessage("system", "You are a weather agent.")
TASK = ChatMessage("user", "What is the weather in Paris?")


# -- keys ------------------------------------------------------------------------------------------
def test_default_key_is_stable_over_the_turns_of_one_conversation():
    turn1 = [SYSTEM, TASK]
    turn5 = [SYSTEM, TASK, ChatMessage("assistant", "calling get_weather"), ChatMessage("tool", "18 C"),
             ChatMessage("user", "And tomorrow?")]
    assert sessions.default_key(turn1) == sessions.default_key(turn5)
    assert sessions.default_key(turn1).startswith("conv-") and len(sessions.default_key(turn1)) == 21


def test_default_key_differs_by_system_prompt_and_task():
    base = sessions.default_key([SYSTEM, TASK])
    assert sessions.default_key([TASK]) != base
    assert sessions.default_key([ChatMessage("system", "Other."), TASK]) != base
    assert sessions.default_key([SYSTEM, ChatMessage("user", "What is the weather in Rome?")]) != base
    # length-prefixed parts: moving text between role and content cannot collide
    assert sessions.default_key([ChatMessage("user", "ab")]) != sessions.default_key([ChatMessage("user", "a"), ])
    assert sessions.default_key([SYSTEM]) == ""  # no user message: no key


def test_explicit_key_precedence_and_validation():
    assert sessions.explicit_key("body", "header", "pck") == "body"
    assert sessions.explicit_key(None, "header", "pck") == "header"
    assert sessions.explicit_key(None, None, "pck") == "pck"
    assert sessions.explicit_key(None, None, None) == ""
    with pytest.raises(InvalidRoute, match="thinkroute.session.*at most 128"):
        sessions.explicit_key("x" * 129, None)
    with pytest.raises(InvalidRoute, match="x-session-id.*printable ASCII"):
        sessions.explicit_key(None, "bad\nkey")


# -- pins ------------------------------------------------------------------------------------------
def _pin(name: str = "direct") -> sessions.Pin:
    return sessions.Pin(strategy=name, models={"model": "m"}, options={}, dial=0.5, reason="r")


def test_pins_are_bounded_lru_with_ttl_and_per_tenant():
    now = [0.0]
    pins = sessions.SessionPins(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    pins.put("t", "a", _pin())
    pins.put("t", "b", _pin())
    assert pins.get("other-tenant", "a") is None  # a key never reaches another tenant's pins
    assert pins.get("t", "a") is not None          # a is now the most recently used
    pins.put("t", "c", _pin())                     # evicts b, the least recently used
    assert len(pins) == 2 and pins.get("t", "b") is None and pins.get("t", "a").turns == 3
    now[0] = 100.0
    assert pins.get("t", "a") is None and pins.get("t", "c") is None  # expired


# -- scorer ----------------------------------------------------------------------------------------
def test_rendezvous_spreads_sessions_and_keeps_each_on_one_replica():
    replicas = ["127.0.0.1:1", "127.0.0.1:2"]
    firsts = Counter(rendezvous_order(f"s{i}", replicas)[0] for i in range(400))
    assert 150 < firsts[replicas[0]] < 250  # even spread of sessions
    assert all(rendezvous_order("s1", replicas) == rendezvous_order("s1", list(reversed(replicas))) for _ in range(3))
    # a third replica only takes sessions; no session moves between the first two
    three = replicas + ["127.0.0.1:3"]
    for i in range(100):
        if rendezvous_order(f"s{i}", three)[0] != "127.0.0.1:3":
            assert rendezvous_order(f"s{i}", three)[0] == rendezvous_order(f"s{i}", replicas)[0]


def test_session_scorer_prefers_one_replica_unless_it_is_much_busier():
    scorer = build_scorer("session", {"spill_gap": 4})
    assert isinstance(scorer, SessionAffinityScorer)
    replicas = ["a", "b"]
    preferred = rendezvous_order("k", replicas)[0]
    req = PickRequest(model="m", inflight={"a": 0, "b": 0}, extra={"session": "k"})
    assert scorer.score(replicas, req) == {r: float(r == preferred) for r in replicas}
    busy = PickRequest(model="m", inflight={preferred: 5, ({"a", "b"} - {preferred}).pop(): 0}, extra={"session": "k"})
    assert scorer.score(replicas, busy) == {"a": 0.0, "b": 0.0}
    assert scorer.score(replicas, PickRequest(model="m", inflight={})) == {"a": 0.0, "b": 0.0}  # no session


async def test_pool_keeps_a_bound_session_on_one_replica_and_spreads_without_one():
    pool = WorkerPool({"m": ["a", "b"]}, scorers=[(LeastLoadScorer(), 1.0), (SessionAffinityScorer(), 4.0)])

    async def picks(key: str) -> set[str]:
        sessions.bind(key)
        return {(await pool.pick("m")).address for _ in range(40)}

    assert len(await asyncio.create_task(picks("agent-1"))) == 1
    assert await asyncio.create_task(picks("")) == {"a", "b"}  # random tie-break without a session


# -- planner ---------------------------------------------------------------------------------------
class AlternatingPolicy:
    """A policy that changes its mind on every call (to show that a pinned session does not)."""

    def __init__(self) -> None:
        self.calls = 0

    async def plan(self, query, dial, planner, pool=None) -> Plan:
        self.calls += 1
        model = ["smollm2-135m", "gemma3-270m"][self.calls % 2]
        cls = get_strategy("direct")
        return Plan(strategy=cls(cls.Options()), models={"model": model}, reason=f"call {self.calls}", dial=dial)


def _planner(scorers: list[dict]) -> tuple[Planner, AlternatingPolicy]:
    cfg = load_config(overrides={"router.scorers": scorers})
    policy = AlternatingPolicy()
    return Planner(cfg, DialStore(cfg.dial.default), policy), policy


def _turns(n: int) -> list[RouteQuery]:
    convo = [SYSTEM, TASK]
    out = []
    for i in range(n):
        out.append(RouteQuery(messages=list(convo), tenant="t"))
        convo += [ChatMessage("assistant", f"answer {i}"), ChatMessage("user", f"follow-up {i}")]
    return out


async def test_a_session_keeps_its_first_plan_and_the_trace_says_so():
    planner, policy = _planner([{"name": "load"}, {"name": "session", "weight": 4}])
    plans = [await planner.plan(q) for q in _turns(5)]
    assert policy.calls == 1 and len({p.models["model"] for p in plans}) == 1
    assert plans[0].session == sessions.default_key([SYSTEM, TASK]) == sessions.current()
    assert plans[3].reason.startswith(f"session {plans[0].session}: the plan of its first turn, kept for turn 4")
    assert plans[3].to_dict()["session"] == plans[0].session
    again = await planner.plan(_turns(1)[0])  # the same first turn again: a new run of the agent, planned afresh
    assert policy.calls == 2 and again.reason == "call 2"


async def test_pins_follow_the_dial_the_explicit_key_and_the_config():
    planner, policy = _planner([{"name": "load"}, {"name": "session", "weight": 4}])
    q1, q2 = _turns(2)
    await planner.plan(q1)
    q2.dial = 0.9  # a different dial plans again
    await planner.plan(q2)
    assert policy.calls == 2
    explicit = RouteQuery(messages=[TASK], session="agent-7", tenant="t")
    assert (await planner.plan(explicit)).session == "agent-7"
    off, off_policy = _planner([{"name": "load"}])  # no session scorer: no keys, no pins
    plans = [await off.plan(q) for q in _turns(3)]
    assert off_policy.calls == 3 and plans[0].session == "" and sessions.current() == ""
    fixed = await planner.plan(RouteQuery(messages=[TASK], model="gemma3-270m"))
    assert fixed.reason.startswith("fixed by the request") and fixed.session  # affinity still binds a key


async def test_a_tool_turn_does_not_reuse_a_plan_pinned_by_a_plain_turn():
    planner, policy = _planner([{"name": "load"}, {"name": "session", "weight": 4}])
    q1, q2, q3 = _turns(3)
    await planner.plan(q1)
    q2.tools = ("get_weather",)  # a constrained turn: planned again (only constrained plans may take it)
    await planner.plan(q2)
    assert policy.calls == 2
    await planner.plan(q3)  # plain again: the tool turn's plan (now the pin) does not fit it either
    assert policy.calls == 3
    q4 = _turns(4)[3]
    assert (await planner.plan(q4)).reason.startswith("session ")  # the plain plan, pinned again, serves turn 4
