"""The routed request's id, carried to every model call it makes, so router and worker logs join.

`RouterCore.route` binds the request's id (`bound(request_id)`) for the request's task; the worker
pool reads it with `call_id()` and sends it as `GenerateRequest.request_id`: `<request id>/<n>`, n
counting this request's model calls from 1. Workers log it (workers/server.py), so `grep <request id>`
over router and worker logs finds one request's whole life. Outside a routed request (benchmarks,
tests) `call_id()` is "" and the worker makes its own id.

Request ids come from clients (`x-request-id`, `RouteRequest.request_id`): they are data. They are cut
to `MAX_PREFIX_CHARS` here (the worker bounds `request_id` to 128 characters) and logged with %r.
"""
from __future__ import annotations

import contextvars
import itertools
from contextlib import contextmanager
from typing import Iterator

#: Characters of the request id kept in a call id (the worker accepts at most 128 in all).
MAX_PREFIX_CHARS = 100

_current: contextvars.ContextVar[tuple[str, "itertools.count[int]"] | None] = contextvars.ContextVar(
    "thinkroute_request_id", default=None)


@contextmanager
def bound(request_id: str) -> Iterator[None]:
    """Within the block (and tasks started from it), model calls carry `request_id`."""
    token = _current.set((request_id[:MAX_PREFIX_CHARS], itertools.count(1)) if request_id else None)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> str:
    """The bound request id, or ""."""
    v = _current.get()
    return v[0] if v else ""


def call_id() -> str:
    """A fresh id for one model call of the bound request (`<request id>/<n>`), or "" when none is bound."""
    v = _current.get()
    if v is None:
        return ""
    return f"{v[0]}/{next(v[1])}"
