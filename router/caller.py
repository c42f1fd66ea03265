"""`Caller`: one model call over the pool's replicas, under the request's deadline and the retry rule.

    result = await caller.call(model, kind, deadline, fn, prompt)   # fn(replica, timeout_s, attempt)

- Deadline: every attempt gets the time left until `deadline`; none left = DeadlineExceeded.
- Retry rule: an attempt that fails with UNAVAILABLE or RESOURCE_EXHAUSTED is retried on another
  replica (up to `max_attempts` distinct replicas) only while nothing it produced has reached the
  caller (a stream that already delivered text marks its error `_thinkroute_emitted`): a retry then
  would repeat or contradict output the client already has. UNAVAILABLE also marks the replica down
  for the ReplicaSet's cooldown. Anything else becomes a `ModelCallError` naming the model and the
  gRPC code, DEADLINE_EXCEEDED a `DeadlineExceeded`.
- Stalls: `unstalled(stream)` turns a started stream that goes silent for `stream_stall_timeout_s`
  into a retryable UNAVAILABLE (gRPC keepalive does not end such a stream).
The Picker reserves the replica (`inflight + 1`); the Caller releases it when the attempt ends.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from router import request_ids
from router.errors import DeadlineExceeded, ModelCallError, NoReplica
from router.picker import Picker
from router.replicas import Replica, ReplicaSet
from workers.types import PromptInput

log = logging.getLogger("thinkroute.router.caller")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
T = TypeVar("T")


class Caller:
    def __init__(self, replicas: ReplicaSet, picker: Picker, max_attempts: int = 3,
                 stream_stall_timeout_s: float = 15.0) -> None:
        self.replicas, self.picker = replicas, picker
        self.max_attempts = max_attempts
        #: Longest silence allowed between two messages of a Generate stream once it has started: a worker
        #: that stops mid-stream (paused, wedged, its host gone) fails the call as UNAVAILABLE after this,
        #: instead of holding the request until its deadline.
        self.stream_stall_timeout_s = stream_stall_timeout_s

    async def call(self, model: str, kind: str, deadline: float, fn: Callable[[Replica, float, int], Awaitable[T]],
                   prompt: PromptInput | None = None, extra: dict | None = None) -> T:
        """Run `fn(replica, timeout, attempt)` on picked replicas until it succeeds or retrying is unsafe."""
        self.replicas.ensure_running()
        await self.replicas.first_registry_read()
        tried: set[str] = set()
        last_error: grpc.aio.AioRpcError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if deadline - time.monotonic() <= 0:
                raise DeadlineExceeded(f"the request's deadline passed before calling model {model!r} ({kind})")
            try:
                replica = await self.picker.pick(model, tried, prompt, deadline, extra)  # reserved
            except NoReplica:
                if last_error is None:
                    raise
                break
            tried.add(replica.address)
            try:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise DeadlineExceeded(f"the request's deadline passed before calling model {model!r} ({kind})")
                return await fn(replica, timeout, attempt)
            except grpc.aio.AioRpcError as e:
                last_error = e
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.replicas.mark_down(replica)
                retry = code in RETRYABLE and not getattr(e, "_thinkroute_emitted", False)
                log.info("request %r: %s on %s (attempt %d) failed: %s%s", request_ids.current(), kind,
                         replica.address, attempt, code.name, "; retrying elsewhere" if retry else "")
                if not retry:
                    break
            finally:
                replica.inflight -= 1
        assert last_error is not None
        code = last_error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded(f"model {model!r} ({kind}) did not answer within the request's deadline")
        raise ModelCallError(f"{kind} failed: {code.name}: {last_error.details()}", model=model, role="", step=None,
                             code=code.name) from last_error

    async def unstalled(self, stream, replica: Replica) -> AsyncIterator:
        """Yield `stream`'s messages; after the first, a gap longer than `stream_stall_timeout_s` raises a
        retryable UNAVAILABLE (the retry rule then decides: retried only if nothing was emitted).
        The wait for the first message is bounded by the call's deadline alone (a busy worker may queue it)."""
        it = stream.__aiter__()
        started = False
        while True:
            try:
                if started:
                    msg = await asyncio.wait_for(it.__anext__(), self.stream_stall_timeout_s)
                else:
                    msg = await it.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                    details=f"worker {replica.address} sent nothing for {self.stream_stall_timeout_s:g} s "
                            "mid-stream (router.stream_stall_timeout_s)") from None
            started = True
            yield msg
