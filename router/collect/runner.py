"""Run every candidate plan on every labelled query through the running router (gRPC ingress), concurrently.

Each request fixes its plan (strategy, model, options of a `policy.candidates` entry), carries the query's
task, and has a deadline (gRPC timeout). At most `concurrency` requests are in flight. A failed request
(deadline, NOT_FOUND, unavailable ...) is counted and its query left for the next run. With `stop_after_s`,
requests not started within that many seconds are not sent (counted in `not_started`); their queries too are
left for the next run, so a long collection can be spread over several runs of the same command.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from google.protobuf import struct_pb2

from router.collect.dataset import LabelledQuery
from router.collect.graders import get_grader
from router.collect.outcomes import OutcomeFile, plan_cost


@dataclass
class CollectStats:
    requests: int = 0
    failed: int = 0
    skipped_queries: int = 0
    written_queries: int = 0
    #: Requests not sent because `stop_after_s` had passed (their queries are left for the next run).
    not_started: int = 0
    #: First few failures: (plan, gRPC code, message).
    errors: list[tuple[str, str, str]] = field(default_factory=list)


def route_request(query: LabelledQuery, plan: Any, max_tokens: int, request_id: str):
    """The RouteRequest fixing `plan` (a CandidatePlan) for `query`."""
    from thinkroute.v1 import router_pb2 as rpb

    options = struct_pb2.Struct()
    if plan.options:
        options.update(plan.options)
    return rpb.RouteRequest(request_id=request_id, query=query.text, strategy=plan.strategy, model=plan.model or "",
                            strategy_options=options if plan.options else None, max_tokens=max_tokens,
                            temperature=0.0, task=query.task or "")


def outcome_of(resp, query: LabelledQuery, prices: dict[str, Any], client_ms: float) -> dict:
    """One plan's outcome from a RouteResponse: graded answer, tokens per model, cost, latency and TTFT."""
    ok, answer = get_grader(query.grader)(resp.text, query.gold)
    usage = [(u.model, u.prompt_tokens, u.generated_tokens) for u in resp.trace.usage]
    generate_calls = [c for c in resp.trace.calls if c.kind == "generate"]
    return {
        "is_correct": bool(ok), "answer": answer, "solution": resp.text,
        "tokens": {m: g for m, _, g in usage},
        "prompt_tokens": sum(p for _, p, _ in usage),
        "prompt_tokens_by_model": {m: p for m, p, _ in usage},
        "thinking_tokens": sum(u.thinking_tokens for u in resp.trace.usage),
        "cost": plan_cost(prices, usage),
        "latency_ms": float(resp.trace.stage_ms.get("total", client_ms)),
        "ttft_ms": float(generate_calls[0].time_to_first_token_ms) if generate_calls else 0.0,
        "client_latency_ms": client_ms,
        "finish_reason": resp.finish_reason,
        "strategy": resp.trace.plan.strategy,
        "request_id": resp.request_id,
    }


async def collect(queries: list[LabelledQuery], plans: dict[str, Any], prices: dict[str, Any], out: OutcomeFile,
                  address: str, metadata: list[tuple[str, str]], *, concurrency: int = 8, timeout_s: float = 120.0,
                  max_tokens: int = 512, on_done: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None, stop_after_s: float | None = None) -> CollectStats:
    """Run the missing (query, plan) pairs; write each query's row once all its plans are answered. Requests are
    started in query order; none is started once `stop_after_s` seconds have passed (None: no limit)."""
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    stats = CollectStats()
    todo: dict[int, list[str]] = {}
    for i, q in enumerate(queries):
        missing = [p for p in plans if p not in out.done_plans(q.text)]
        if missing:
            todo[i] = missing
        else:
            stats.skipped_queries += 1
    total = sum(len(v) for v in todo.values())
    if on_total:
        on_total(total)
    results: dict[int, dict[str, dict]] = {i: {} for i in todo}
    failed: set[int] = set()
    sem = asyncio.Semaphore(concurrency)
    stop_at = None if stop_after_s is None else time.monotonic() + stop_after_s
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = rpb_grpc.RouterStub(channel)

        async def one(i: int, plan: str) -> None:
            q = queries[i]
            async with sem:
                t0 = time.monotonic()
                if stop_at is not None and t0 > stop_at:
                    stats.not_started += 1
                    failed.add(i)
                    if on_done:
                        on_done(1)
                    return
                stats.requests += 1
                try:
                    resp = await stub.Generate(route_request(q, plans[plan], max_tokens, ""), metadata=metadata,
                                               timeout=timeout_s)
                    results[i][plan] = outcome_of(resp, q, prices, (time.monotonic() - t0) * 1e3)
                except grpc.aio.AioRpcError as e:
                    stats.failed += 1
                    failed.add(i)
                    if len(stats.errors) < 5:
                        stats.errors.append((plan, e.code().name, e.details() or ""))
                finally:
                    if on_done:
                        on_done(1)
            if i not in failed and len(results[i]) == len(todo[i]):
                fields = {"gold": q.gold, "grader": q.grader}
                if q.task is not None:
                    fields["task"] = q.task
                out.write(q.text, fields, results.pop(i))
                stats.written_queries += 1

        await asyncio.gather(*(one(i, p) for i, ps in todo.items() for p in ps))
    return stats
