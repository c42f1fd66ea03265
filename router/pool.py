"""`WorkerPool`: every model call the router makes goes through here.

For each call: filter (drop replicas marked down) -> score (weighted scorers, see
router/scorers) -> pick (max score, random tie-break) -> call with the request's deadline.
A call that fails before any output reached the caller with UNAVAILABLE or RESOURCE_EXHAUSTED
is retried on another replica (safe: nothing was emitted); otherwise the error becomes a
`ModelCallError` naming the model. A replica that answered UNAVAILABLE is skipped for
`down_cooldown_s`.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np

from router.errors import DeadlineExceeded, ModelCallError, NoReplica, NotFound
from router.scorers import LeastLoadScorer, PickRequest, ReplicaScorer
from router.trace import ModelCallRecord
from router.types import Completion, ModelInfo, Scored
from router.worker_client import WorkerClient, model_info
from workers import wire
from workers.types import PromptInput, Sampling

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Replica:
    address: str
    model: str
    client: WorkerClient
    inflight: int = 0
    down_until: float = 0.0
    replica_id: str = ""
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=512))


class WorkerPool:
    def __init__(self, replicas: dict[str, list[str]], scorers: list[tuple[ReplicaScorer, float]] | None = None,
                 max_attempts: int = 3, down_cooldown_s: float = 2.0,
                 client_factory: Callable[[str], WorkerClient] = WorkerClient,
                 stream_stall_timeout_s: float = 15.0) -> None:
        if not replicas:
            raise ValueError("a worker pool needs at least one model with one replica")
        self.replicas: dict[str, list[Replica]] = {
            model: [Replica(a, model, client_factory(a)) for a in addresses] for model, addresses in replicas.items()
        }
        self.scorers = scorers or [(LeastLoadScorer(), 1.0)]
        self.max_attempts = max_attempts
        self.down_cooldown_s = down_cooldown_s
        #: Longest silence allowed between two messages of a Generate stream once it has started: a worker
        #: that stops mid-stream (paused, wedged, its host gone) fails the call as UNAVAILABLE after this,
        #: instead of holding the request until its deadline (gRPC keepalive does not end such a stream).
        self.stream_stall_timeout_s = stream_stall_timeout_s
        self._infos: dict[str, ModelInfo] = {}
        self._token_cache: dict[tuple, list[int]] = {}

    # -- picking -------------------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(self.replicas)

    def _candidates(self, model: str, exclude: set[str]) -> list[Replica]:
        if model not in self.replicas:
            raise NotFound(f"unknown model {model!r}; this router serves {self.models()}")
        now = time.monotonic()
        live = [r for r in self.replicas[model] if r.address not in exclude and r.down_until <= now]
        return live

    async def pick(self, model: str, exclude: set[str] | None = None, prompt: PromptInput | None = None,
                   deadline: float | None = None) -> Replica:
        candidates = self._candidates(model, exclude or set())
        if not candidates:
            raise NoReplica(f"no healthy replica of model {model!r} is available "
                            f"({len(self.replicas[model])} configured, all down or already tried)")
        if len(candidates) == 1:
            return candidates[0]
        request = PickRequest(model=model, inflight={r.address: r.inflight for r in candidates})
        if prompt is not None and any(s.needs_prompt_ids for s, _ in self.scorers):
            request.prompt_ids = await self.tokenize(model, prompt, deadline=deadline or time.monotonic() + 10)
            request.extra["replica_ids"] = {r.address: await self._replica_id(r) for r in candidates}
        totals = {r.address: 0.0 for r in candidates}
        for scorer, weight in self.scorers:
            for address, s in scorer.score(list(totals), request).items():
                totals[address] += weight * min(1.0, max(0.0, s))
        best = max(totals.values())
        winners = [r for r in candidates if totals[r.address] == best]
        return random.choice(winners)

    async def _replica_id(self, replica: Replica) -> str:
        """The worker's own replica id (what its KV connector writes into the prefix index)."""
        if not replica.replica_id:
            try:
                replica.replica_id = (await replica.client.info(timeout=2.0)).replica_id or replica.address
            except grpc.aio.AioRpcError:
                return replica.address
        return replica.replica_id

    def _mark_down(self, replica: Replica) -> None:
        replica.down_until = time.monotonic() + self.down_cooldown_s

    # -- calls ---------------------------------------------------------------------------------
    async def _with_retries(self, model: str, kind: str, deadline: float, call, prompt: PromptInput | None = None):
        """Run `call(replica, timeout)` on picked replicas until it succeeds or retrying is unsafe."""
        tried: set[str] = set()
        last_error: grpc.aio.AioRpcError | None = None
        for attempt in range(1, self.max_attempts + 1):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded(f"the request's deadline passed before calling model {model!r} ({kind})")
            try:
                replica = await self.pick(model, tried, prompt, deadline)
            except NoReplica:
                if last_error is None:
                    raise
                break
            tried.add(replica.address)
            replica.inflight += 1
            try:
                return await call(replica, timeout, attempt)
            except grpc.aio.AioRpcError as e:
                last_error = e
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._mark_down(replica)
                if e.code() not in RETRYABLE or getattr(e, "_thinkroute_emitted", False):
                    break
            finally:
                replica.inflight -= 1
        assert last_error is not None
        code = last_error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded(f"model {model!r} ({kind}) did not answer within the request's deadline")
        raise ModelCallError(f"{kind} failed: {code.name}: {last_error.details()}", model=model, role="", step=None,
                             code=code.name) from last_error

    async def generate(self, model: str, prompt: PromptInput, sampling: Sampling, *, deadline: float,
                       on_delta: Callable[[str], Awaitable[None]] | None = None) -> tuple[Completion, ModelCallRecord]:
        async def call(replica: Replica, timeout: float, attempt: int):
            start = time.perf_counter()
            parts: list[str] = []
            ids: list[int] = []
            final = None
            first_ms = 0.0
            stream = replica.client.generate(prompt, sampling, timeout=timeout)
            try:
                async for msg in self._unstalled(stream, replica):
                    if msg.text_delta:
                        if not first_ms:
                            first_ms = (time.perf_counter() - start) * 1e3
                        parts.append(msg.text_delta)
                        if on_delta is not None:
                            await on_delta(msg.text_delta)
                    ids.extend(msg.token_ids)
                    if msg.HasField("final"):
                        final = msg.final
            except grpc.aio.AioRpcError as e:
                e._thinkroute_emitted = bool(parts) and on_delta is not None  # not safe to retry
                raise
            finally:
                stream.cancel()
            latency = (time.perf_counter() - start) * 1e3
            replica.latencies_ms.append(latency)
            if final is None:
                raise ModelCallError("the worker closed the stream without a final message", model=model,
                                     role="", step=None)
            u = final.usage
            completion = Completion(
                text="".join(parts), token_ids=ids, finish_reason=wire.finish_name(final.finish_reason),
                prompt_tokens=u.prompt_tokens, generated_tokens=u.generated_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens, stop_string=final.stop_string,
            )
            record = ModelCallRecord(
                model=model, role="", kind="generate", replica=replica.address, prompt_tokens=u.prompt_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens, remote_cached_prompt_tokens=u.remote_cached_prompt_tokens,
                generated_tokens=u.generated_tokens, thinking_tokens=u.thinking_tokens, latency_ms=latency,
                time_to_first_token_ms=first_ms or final.time_to_first_token_ms,
                finish_reason=completion.finish_reason, attempts=attempt,
            )
            return completion, record

        return await self._with_retries(model, "generate", deadline, call, prompt)

    async def _unstalled(self, stream, replica: Replica):
        """Yield `stream`'s messages; after the first, a gap longer than `stream_stall_timeout_s` raises a
        retryable UNAVAILABLE (the caller's retry rule then decides: retried only if nothing was emitted).
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

    async def score(self, model: str, prompt: PromptInput, *, continuation_ids: list[int] | None = None,
                    continuation_text: str | None = None, top_k: int = 0, candidate_ids: list[int] | None = None,
                    deadline: float, cache_salt: str = "") -> tuple[Scored, ModelCallRecord]:
        async def call(replica: Replica, timeout: float, attempt: int):
            start = time.perf_counter()
            r = await replica.client.score(prompt, continuation_ids=continuation_ids,
                                           continuation_text=continuation_text, top_k=top_k,
                                           candidate_ids=candidate_ids or [], timeout=timeout, cache_salt=cache_salt)
            latency = (time.perf_counter() - start) * 1e3
            scored = Scored(continuation=wire.logprobs_from_pb(r.continuation), top_next=wire.logprobs_from_pb(r.top_next),
                            candidates=wire.logprobs_from_pb(r.candidates), prompt_tokens=r.prompt_tokens)
            record = ModelCallRecord(model=model, role="", kind="score", replica=replica.address,
                                     prompt_tokens=r.prompt_tokens + len(r.continuation),
                                     cached_prompt_tokens=r.cached_prompt_tokens, latency_ms=latency, attempts=attempt)
            return scored, record

        return await self._with_retries(model, "score", deadline, call, prompt)

    async def tokenize(self, model: str, prompt: PromptInput, *, deadline: float) -> list[int]:
        key = (model, prompt)
        if key in self._token_cache:
            return self._token_cache[key]

        async def call(replica: Replica, timeout: float, attempt: int):
            return await replica.client.tokenize(prompt, timeout)

        ids = await self._with_retries(model, "tokenize", deadline, call)
        if len(self._token_cache) > 4096:
            self._token_cache.clear()
        self._token_cache[key] = ids
        return ids

    async def hidden_states(self, model: str, prompts: list[PromptInput], layers: list[int], *, mean_pool: bool = False,
                            deadline: float) -> tuple[list[np.ndarray], ModelCallRecord]:
        async def call(replica: Replica, timeout: float, attempt: int):
            start = time.perf_counter()
            states = await replica.client.hidden_states(prompts, layers, mean_pool, timeout)
            record = ModelCallRecord(model=model, role="probe", kind="hidden_state", replica=replica.address,
                                     latency_ms=(time.perf_counter() - start) * 1e3, attempts=attempt)
            return states, record

        return await self._with_retries(model, "hidden_state", deadline, call)

    async def hidden_features(self, model: str, prompts: list[PromptInput], request: dict, *,
                              deadline: float) -> tuple[list[np.ndarray], str, ModelCallRecord]:
        """Every column of a hidden-state feature spec in one call per replica attempt; `request` is
        probes.features.feature_request(spec). Returns (rows, the worker's served model_id, record)."""
        async def call(replica: Replica, timeout: float, attempt: int):
            start = time.perf_counter()
            rows, model_id = await replica.client.hidden_features(prompts, request["layers"], request["pooling"],
                                                                  request["uncertainty"], request["max_tokens"], timeout)
            record = ModelCallRecord(model=model, role="probe", kind="hidden_state", replica=replica.address,
                                     latency_ms=(time.perf_counter() - start) * 1e3, attempts=attempt)
            return rows, model_id, record

        return await self._with_retries(model, "hidden_state", deadline, call)

    async def served_model_id(self, model: str) -> str:
        """The model id the pool's workers report in `Info` (what they serve, not the pool's name)."""
        async def call(replica: Replica, timeout: float, attempt: int):
            return (await replica.client.info(timeout=min(timeout, 10.0))).model_id

        return await self._with_retries(model, "info", time.monotonic() + 30.0, call)

    async def info(self, model: str) -> ModelInfo:
        if model not in self._infos:
            async def call(replica: Replica, timeout: float, attempt: int):
                return await replica.client.info(timeout=min(timeout, 10.0))

            resp = await self._with_retries(model, "info", time.monotonic() + 30.0, call)
            self._infos[model] = model_info(model, resp)
        return self._infos[model]

    # -- signals -------------------------------------------------------------------------------
    async def stats(self, target_utilisation: float = 0.7) -> list[dict]:
        """Per model pool: replicas, healthy, running, queued, tokens/s, p50/p95 latency, desired replicas."""
        out = []
        for model, replicas in self.replicas.items():
            loads = await asyncio.gather(*(r.client.load() for r in replicas), return_exceptions=True)
            ok = [l for l in loads if not isinstance(l, BaseException)]
            running = sum(l.running for l in ok)
            queued = sum(l.queued for l in ok)
            capacity = sum(max(1, l.max_concurrency) for l in ok) or 1
            lat = np.array([x for r in replicas for x in r.latencies_ms]) if any(r.latencies_ms for r in replicas) else None
            busy = (running + queued) / capacity
            desired = max(1, int(np.ceil(len(replicas) * busy / target_utilisation))) if ok else len(replicas)
            out.append({
                "model": model, "replicas": len(replicas), "healthy_replicas": len(ok), "running": running,
                "queued": queued, "generated_tokens_per_s": sum(l.generated_tokens_per_s for l in ok),
                "p50_latency_ms": float(np.percentile(lat, 50)) if lat is not None else 0.0,
                "p95_latency_ms": float(np.percentile(lat, 95)) if lat is not None else 0.0,
                "desired_replicas": desired,
            })
        return out

    async def close(self) -> None:
        for replicas in self.replicas.values():
            for r in replicas:
                await r.client.close()
