"""`WorkerPool`: every model call the router makes goes through here. A facade over three parts:

- `ReplicaSet` (router/replicas.py): the replicas of each pool: static addresses and, with discovery,
  the workers registered in Redis; grpc.health.v1 probing (a hung or unhealthy replica gets no traffic).
- `Picker` (router/picker.py): filter -> score (router/scorers) -> pick -> reserve, with no await
  between reading the in-flight counts and the reservation.
- `Caller` (router/caller.py): the request's deadline, the stream stall timeout, and the retry rule
  (retry on another replica only before any output reached the caller).

What this module adds: the model calls themselves (Generate, Score, Tokenize, HiddenState, Info as
protobuf in, router types and `ModelCallRecord`s out; each Generate carries the routed request's id,
router/request_ids.py) and the per-pool signals (`stats`, read from the ReplicaSet).
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import grpc
import numpy as np

from router import request_ids
from router.caller import RETRYABLE, Caller  # noqa: F401 - RETRYABLE re-exported
from router.errors import ModelCallError, NoReplica
from router.picker import Picker
from router.replicas import Discovery, Replica, ReplicaSet
from router.scaling import desired_replicas
from router.scorers import ReplicaScorer
from router.trace import ModelCallRecord
from router.types import Completion, ModelInfo, Scored
from router.worker_client import WorkerClient, model_info
from workers import wire
from workers.types import PromptInput, Sampling

__all__ = ["WorkerPool", "Replica", "RETRYABLE"]


class WorkerPool:
    def __init__(self, replicas: dict[str, list[str]], scorers: list[tuple[ReplicaScorer, float]] | None = None,
                 max_attempts: int = 3, down_cooldown_s: float = 2.0,
                 client_factory: Callable[[str], WorkerClient] = WorkerClient,
                 stream_stall_timeout_s: float = 15.0, *, health_interval_s: float | None = None,
                 health_timeout_s: float = 2.0, unhealthy_after: int = 3,
                 discovery: Discovery | None = None) -> None:
        """`replicas`: model pool -> static worker addresses (a pool may be empty with `discovery`).
        `health_interval_s` None = no health probing (each failed call still marks its replica down)."""
        if not replicas:
            raise ValueError("a worker pool needs at least one model with one replica")
        self.replica_set = ReplicaSet(replicas, client_factory, down_cooldown_s=down_cooldown_s,
                                      health_interval_s=health_interval_s, health_timeout_s=health_timeout_s,
                                      unhealthy_after=unhealthy_after, discovery=discovery)
        self.picker = Picker(self.replica_set, scorers, tokenize=self._tokenize_for_pick)
        self.caller = Caller(self.replica_set, self.picker, max_attempts, stream_stall_timeout_s)
        self._infos: dict[str, ModelInfo] = {}
        self._token_cache: dict[tuple, list[int]] = {}

    # -- the parts' settings, as attributes of the pool (older callers and tests use them) ----------
    @property
    def replicas(self) -> dict[str, list[Replica]]:
        return self.replica_set.replicas

    @property
    def scorers(self) -> list[tuple[ReplicaScorer, float]]:
        return self.picker.scorers

    @property
    def max_attempts(self) -> int:
        return self.caller.max_attempts

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self.caller.max_attempts = value

    @property
    def stream_stall_timeout_s(self) -> float:
        return self.caller.stream_stall_timeout_s

    @stream_stall_timeout_s.setter
    def stream_stall_timeout_s(self, value: float) -> None:
        self.caller.stream_stall_timeout_s = value

    @property
    def down_cooldown_s(self) -> float:
        return self.replica_set.down_cooldown_s

    # -- picking -------------------------------------------------------------------------------
    def models(self) -> list[str]:
        return self.replica_set.models()

    def has_live_replica(self, model: str) -> bool:
        """True when `model` has a replica not marked down now (an unknown model: True, so the call says NotFound).
        The planning policy falls back past plans whose pools answer False."""
        return model not in self.replicas or bool(self.replica_set.candidates(model))

    async def pick(self, model: str, exclude: set[str] | None = None, prompt: PromptInput | None = None,
                   deadline: float | None = None) -> Replica:
        """The replica a call would go to now (inspection and tests: nothing stays reserved)."""
        replica = await self.picker.pick(model, exclude, prompt, deadline)
        replica.inflight -= 1
        return replica

    async def _tokenize_for_pick(self, model: str, prompt: PromptInput, deadline: float) -> list[int]:
        """The prompt's ids for the replica scorers: a `token_ids` prompt is its own ids (the worker's Tokenize
        returns them unchanged, and rejects bad ones - so does the Generate that follows); else Tokenize, cached
        per (model, prompt), so a retry of the same call does not tokenize again."""
        if prompt.token_ids is not None and prompt.text is None and prompt.messages is None:
            return list(prompt.token_ids)
        return await self.tokenize(model, prompt, deadline=deadline)

    # -- calls ---------------------------------------------------------------------------------
    async def generate(self, model: str, prompt: PromptInput, sampling: Sampling, *, deadline: float,
                       on_delta: Callable[[str], Awaitable[None]] | None = None) -> tuple[Completion, ModelCallRecord]:
        async def call(replica: Replica, timeout: float, attempt: int):
            start = time.perf_counter()
            parts: list[str] = []
            ids: list[int] = []
            final = None
            first_ms = 0.0
            stream = replica.client.generate(prompt, sampling, timeout=timeout, request_id=request_ids.call_id())
            try:
                async for msg in self.caller.unstalled(stream, replica):
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

        return await self.caller.call(model, "generate", deadline, call, prompt,
                                      extra={"cache_salt": sampling.cache_salt} if sampling.cache_salt else None)

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

        return await self.caller.call(model, "score", deadline, call, prompt,
                                      extra={"cache_salt": cache_salt} if cache_salt else None)

    async def tokenize(self, model: str, prompt: PromptInput, *, deadline: float) -> list[int]:
        key = (model, prompt)
        if key in self._token_cache:
            return self._token_cache[key]

        async def call(replica: Replica, timeout: float, attempt: int):
            return await replica.client.tokenize(prompt, timeout)

        ids = await self.caller.call(model, "tokenize", deadline, call)
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

        return await self.caller.call(model, "hidden_state", deadline, call)

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

        return await self.caller.call(model, "hidden_state", deadline, call)

    async def served_model_id(self, model: str, *, deadline: float | None = None) -> str:
        """The model id the pool's workers report in `Info` (what they serve, not the pool's name).
        `deadline` (time.monotonic()): the caller's; default 30 s from now."""
        async def call(replica: Replica, timeout: float, attempt: int):
            return (await replica.client.info(timeout=min(timeout, 10.0))).model_id

        return await self.caller.call(model, "info", deadline or time.monotonic() + 30.0, call)

    async def info(self, model: str, *, deadline: float | None = None) -> ModelInfo:
        """The pool's ModelInfo (cached after the first answer). `deadline`: the caller's; default 30 s from now."""
        if model not in self._infos:
            async def call(replica: Replica, timeout: float, attempt: int):
                return await replica.client.info(timeout=min(timeout, 10.0))

            resp = await self.caller.call(model, "info", deadline or time.monotonic() + 30.0, call)
            self._infos[model] = model_info(model, resp)
        return self._infos[model]

    # -- signals -------------------------------------------------------------------------------
    async def stats(self, target_utilisation: float = 0.7) -> list[dict]:
        """Per model pool: replicas, healthy, running, queued, tokens/s, p50/p95 latency, desired replicas.

        Read from the ReplicaSet: its health verdicts and the Load reports of its last probe round (without
        background probing, one probe round runs now). `desired_replicas`: router/scaling.py."""
        if self.replica_set.health_interval_s is None:
            await self.replica_set.probe_all(verdict=False)  # loads only: routing keeps its own view
        else:
            self.replica_set.ensure_running()
            if any(not r.probed_at for pool in self.replicas.values() for r in pool):
                await self.replica_set.probe_all()  # first call: do not report "no load" before the first round
        out = []
        for model, replicas in self.replicas.items():
            live = [r for r in self.replica_set.candidates(model) if r.load is not None]
            loads = self.replica_set.loads(model)
            reports = [r.load for r in live]
            lat = np.array([x for r in replicas for x in r.latencies_ms]) if any(r.latencies_ms for r in replicas) else None
            out.append({
                "model": model, "replicas": len(replicas), "healthy_replicas": len(live),
                "running": sum(l.running for l in loads), "queued": sum(l.queued for l in loads),
                "generated_tokens_per_s": sum(r.generated_tokens_per_s for r in reports),
                "p50_latency_ms": float(np.percentile(lat, 50)) if lat is not None else 0.0,
                "p95_latency_ms": float(np.percentile(lat, 95)) if lat is not None else 0.0,
                "desired_replicas": desired_replicas(loads, len(replicas), target_utilisation),
            })
        return out

    async def close(self) -> None:
        await self.replica_set.close()
