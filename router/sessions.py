"""Agent sessions: one conversation keeps one plan and one replica for its whole tool loop.

An agent sends the same growing conversation again and again (instructions, the user's task,
then one tool call and its result per turn). Answered on one replica, every turn's prompt
starts with the previous turn's, so the engine's prefix cache serves it; spread over replicas,
each switch recomputes the whole prefix. Two pieces keep a session together:

- the **session key** (this module): `thinkroute.session` in the request body, else the
  `x-session-id` header, else OpenAI's `prompt_cache_key`, else a hash of the conversation's
  first messages (the leading system messages and the first user message), which stay the same
  for every turn of one agent run. Explicit keys are data: bounded length, printable ASCII, and
  scoped to the tenant (a key never reaches another tenant's pins).
- the **plan pin** (`SessionPins`, consulted by `Planner.plan`): the plan the policy chose for a
  session's first turn is reused by its later turns (those with assistant or tool messages), as
  long as the dial is the same and the turn is of the same kind (with tools or a response_format,
  or neither); a bounded LRU with a time-to-live, one per
  router replica. A first turn is always planned afresh.
- the **replica pick** (`router/scorers/session.py`): the `session` replica scorer prefers, by
  rendezvous hashing over the replica addresses, the same replica of a model for a session; it
  needs no state, so every router replica picks the same one, and a replica that goes down
  hands only its own sessions to the others.

The key of the request being routed travels to the scorer in a context variable that the
planner binds (`bind`) for the rest of the request's task: the worker pool's pick sees it
without every strategy and pool call carrying it.
"""
from __future__ import annotations

import contextvars
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from router.errors import InvalidRoute
from workers.types import ChatMessage

SESSION_HEADER = "x-session-id"
MAX_KEY_CHARS = 128
DEFAULT_KEY_PREFIX = "conv-"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("thinkroute_session", default="")


def check_key(key: str, field_name: str) -> str:
    """An explicit session key, validated at the boundary: 1..128 printable ASCII characters.
    Raises InvalidRoute naming `field_name`."""
    if not isinstance(key, str) or not key:
        raise InvalidRoute(f"{field_name}: a session key is a non-empty string (up to {MAX_KEY_CHARS} characters)")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidRoute(f"{field_name}: the session key has {len(key)} characters; at most {MAX_KEY_CHARS} "
                           "(send a hash or an id, not the conversation)")
    if not all(32 <= ord(c) < 127 for c in key):
        raise InvalidRoute(f"{field_name}: the session key must be printable ASCII (letters, digits, punctuation)")
    return key


def explicit_key(field_value: str | None, header: str | None, prompt_cache_key: str | None = None) -> str:
    """The caller's session key by precedence (body field, header, prompt_cache_key), validated; "" if none."""
    for value, name in ((field_value, "thinkroute.session"), (header, f"header {SESSION_HEADER}"),
                        (prompt_cache_key, "prompt_cache_key")):
        if value is not None and value != "":
            return check_key(value, name)
    return ""


def default_key(messages: Sequence[ChatMessage]) -> str:
    """`conv-<16 hex>`: SHA-256 of the leading system messages and the first user message (roles
    and contents, length-prefixed). Every turn of one agent run has the same ones; "" when the
    conversation has no user message."""
    head: list[ChatMessage] = []
    for m in messages:
        if m.role == "system" and all(h.role == "system" for h in head):
            head.append(m)
        elif m.role == "user":
            head.append(m)
            break
    if not head or head[-1].role != "user":
        return ""
    h = hashlib.sha256()
    for m in head:
        for part in (m.role, m.content):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return DEFAULT_KEY_PREFIX + h.hexdigest()[:16]


def follow_up(messages: Sequence[ChatMessage]) -> bool:
    """True for a later turn of a conversation (it holds an assistant or tool message): only those
    reuse a pinned plan; a first turn is planned afresh (and pins its plan)."""
    return any(m.role in ("assistant", "tool") for m in messages)


def bind(key: str) -> None:
    """Make `key` the session of the request running in the current task (read by `current`)."""
    _current.set(key)


def current() -> str:
    """The session key of the request being routed in this task ("" = none)."""
    return _current.get()


@dataclass
class Pin:
    """What a session's first plan was: enough to rebuild the same Plan."""

    strategy: str
    models: dict[str, str]
    options: dict[str, Any]
    dial: float
    reason: str
    constrained: bool = False  # made for a turn with tools or a response_format (router.planner.constrained_turn)
    turns: int = 1
    last_used: float = field(default=0.0)


class SessionPins:
    """(tenant, session key) -> the session's pinned plan. Bounded: at most `max_sessions`
    entries (least recently used evicted) and each forgotten `ttl_s` after its last use."""

    def __init__(self, max_sessions: int = 10_000, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise ValueError(f"max_sessions must be >= 1 and ttl_s > 0; got {max_sessions}, {ttl_s}")
        self.max_sessions, self.ttl_s, self.clock = max_sessions, ttl_s, clock
        self._pins: OrderedDict[tuple[str, str], Pin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, tenant: str, key: str) -> Pin | None:
        """The live pin of this session (refreshing its age and LRU position), or None."""
        pin = self._pins.get((tenant, key))
        if pin is None:
            return None
        now = self.clock()
        if now - pin.last_used > self.ttl_s:
            del self._pins[(tenant, key)]
            return None
        pin.last_used = now
        pin.turns += 1
        self._pins.move_to_end((tenant, key))
        return pin

    def put(self, tenant: str, key: str, pin: Pin) -> None:
        pin.last_used = self.clock()
        self._pins[(tenant, key)] = pin
        self._pins.move_to_end((tenant, key))
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)

    def forget(self, tenant: str, key: str) -> None:
        self._pins.pop((tenant, key), None)
