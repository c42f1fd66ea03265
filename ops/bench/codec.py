"""What the router's own conversions cost per 1-token request, stage by stage, on this machine's CPU.

Times the project's real functions, in process, with no network and no Ray (a worker's answer is replayed
from bytes as gRPC would hand it over):

    HTTP path: body bytes -> ChatCompletionRequest (`http_api._parse`) -> RouteQuery (`http_api.chat_query`)
               -> GenerateRequest bytes (`WorkerClient.generate`'s request, serialized as gRPC does)
               -> GenerateResponse messages parsed -> Completion + ModelCallRecord (`WorkerPool.generate`,
                  pick included) -> trace dict (`Trace.to_dict`) -> chat.completion JSON reply
                  (`http_api.completion_body` + starlette's JSONResponse render, `plan_summary` header)
    gRPC path: RouteRequest bytes -> RouteQuery (`router_wire.query_from_pb`) -> the same worker stages
               -> RouteResponse with its trace Structs (`router_wire.result_to_pb`) -> bytes

plus, for scale, a whole `RouterCore.route` (validate, plan, direct strategy, pool call, trace, metrics; no
admission, no ingress) on the same replayed worker, with a fresh RouteQuery parsed from the body each time. Each stage: the median over `--repeat` runs of `--n` calls, in microseconds per request,
and its share of the router overhead recorded in docs/benchmarks.md (`--overhead-ms`, default 6.4 ms added
at p50, of which `--own-ms` 1.1 ms is the router's own work beside Ray Serve's proxy hop).

    python ops/bench/codec.py                      # about 20 s on a 2-core machine
    python ops/bench/codec.py --n 2000 --repeat 7 --json runs/bench/codec.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import worker_pb2 as pb  # noqa: E402

MODEL = "smollm2-135m"
QUESTION = "What is 12 plus 30?"


def http_body(trace: bool) -> bytes:
    """The 1-token chat request a client sends (model fixed by the request)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1, "temperature": 0}
    if trace:
        body["thinkroute"] = {"trace": True}
    return json.dumps(body).encode()


def grpc_body() -> bytes:
    return rpb.RouteRequest(messages=[pb.ChatMessage(role="user", content=QUESTION)], model=MODEL,
                            max_tokens=1).SerializeToString()


#: The worker's answer to a 1-token Generate, as bytes on the wire: one delta, then the final message.
WORKER_REPLY = [
    pb.GenerateResponse(text_delta="42", token_ids=[3101]).SerializeToString(),
    pb.GenerateResponse(final=pb.GenerateFinal(
        finish_reason=pb.FINISH_REASON_LENGTH, time_to_first_token_ms=120.0, total_time_ms=121.0,
        usage=pb.Usage(prompt_tokens=37, generated_tokens=1, cached_prompt_tokens=32))).SerializeToString(),
]


class ReplayStub:
    """`WorkerClient.stub` stand-in: serializes each request as grpc does, answers from WORKER_REPLY bytes."""

    def __init__(self) -> None:
        self.sent_bytes = 0

    def Generate(self, req: pb.GenerateRequest, timeout: float):  # noqa: N802 - gRPC method name
        self.sent_bytes += len(req.SerializeToString())
        return ReplayStream()

    async def Info(self, req: pb.InfoRequest, timeout: float) -> pb.InfoResponse:  # noqa: N802
        return pb.InfoResponse(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", has_chat_template=True,
                               context_length=2048, backend="vllm", device="cpu", replica_id="w0")


class ReplayStream:
    def __aiter__(self):
        return self._run()

    async def _run(self):
        for raw in WORKER_REPLY:
            yield pb.GenerateResponse.FromString(raw)

    def cancel(self) -> bool:
        return True


def replay_client(address: str):
    from router.worker_client import WorkerClient

    client = WorkerClient(address)
    stub = ReplayStub()
    client._stub = stub

    class Bound(type(client)):  # the real generate/info methods, on the replay stub
        @property
        def stub(self):  # noqa: D401
            return stub

    client.__class__ = Bound
    return client


def bench_sync(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Median over `repeat` runs of the mean time of `fn()` in microseconds."""
    for _ in range(min(n, 200)):
        fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def bench_async(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]], n: int, repeat: int) -> float:
    async def many(k: int) -> None:
        for _ in range(k):
            await fn()

    loop.run_until_complete(many(min(n, 200)))
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        loop.run_until_complete(many(n))
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def measure(n: int, repeat: int) -> dict[str, Any]:
    from starlette.responses import JSONResponse

    from router import http_api
    from router.config import load_config
    from router.router_wire import query_from_pb, result_to_pb
    from router.service import RouterCore
    from router.trace import Trace
    from router.types import RouteResult
    from workers.types import PromptInput, Sampling

    config = load_config(overrides={"policy": None})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    core = RouterCore(config, {m: ["127.0.0.1:1"] for m in config.models})
    core.pool.replica_set.health_interval_s = None  # no background health probes of the replayed worker
    for pool in core.pool.replicas.values():
        for r in pool:
            r.client = replay_client(r.address)

    async def route_once(query):
        return await core.route(query)

    # One real request through the core gives the trace and result every later stage converts.
    req_plain = http_api._parse(http_body(trace=False))
    req_traced = http_api._parse(http_body(trace=True))
    target = http_api.parse_model_name(MODEL, config)
    query, turn = http_api.chat_query(req_plain, target, "", None, config)
    result: RouteResult = loop.run_until_complete(route_once(query))
    prompt = PromptInput(messages=tuple(query.conversation()), add_generation_prompt=True)
    sampling = Sampling(max_tokens=1, temperature=0.0, top_p=1.0)
    trace = Trace()
    trace.plan = dict(result.trace["plan"])
    for c in result.trace["calls"]:
        from router.trace import ModelCallRecord

        trace.add_call(ModelCallRecord(**c))
    trace.stage_ms.update(result.trace["stage_ms"])
    trace.details.update(result.trace["details"])
    prices = http_api.prices(config)
    raw_http, raw_grpc = http_body(False), grpc_body()

    def http_reply(traced: bool) -> bytes:
        body = http_api.completion_body(result, turn, 1_700_000_000, traced, prices)
        return JSONResponse(body, headers={http_api.PLAN_HEADER: http_api.plan_summary(result.trace),
                                           "x-request-id": result.request_id}).body

    async def pool_call():
        return await core.pool.generate(MODEL, prompt, sampling, deadline=time.monotonic() + 30)

    def fresh_query():
        return http_api.chat_query(http_api._parse(raw_http), target, "", None, config)[0]

    stages: list[tuple[str, str, float]] = []

    def add(path: str, name: str, us: float) -> None:
        stages.append((path, name, us))

    add("http", "body JSON -> ChatCompletionRequest (_parse)", bench_sync(lambda: http_api._parse(raw_http), n, repeat))
    add("http", "ChatCompletionRequest -> RouteQuery (chat_query)",
        bench_sync(lambda: http_api.chat_query(req_plain, target, "", None, config), n, repeat))
    add("both", "pool call: pick + GenerateRequest bytes + 2 replies parsed -> Completion, record",
        bench_async(loop, pool_call, n, repeat))
    add("both", "trace -> dict (Trace.to_dict)", bench_sync(trace.to_dict, n, repeat))
    add("http", "reply: chat.completion JSON (completion_body + JSONResponse), no trace",
        bench_sync(lambda: http_reply(False), n, repeat))
    add("http", "reply with thinkroute_trace (client asked: thinkroute.trace)",
        bench_sync(lambda: http_reply(True), n, repeat))
    add("grpc", "RouteRequest bytes -> RouteQuery (FromString + query_from_pb)",
        bench_sync(lambda: query_from_pb(rpb.RouteRequest.FromString(raw_grpc)), n, repeat))
    add("grpc", "RouteResult -> RouteResponse bytes (result_to_pb, trace Structs)",
        bench_sync(lambda: result_to_pb(result).SerializeToString(), n, repeat))
    whole = bench_async(loop, lambda: route_once(fresh_query()), n, repeat)
    loop.run_until_complete(core.close())
    loop.close()
    return {"stages": [{"path": p, "stage": s, "us": round(u, 1)} for p, s, u in stages],
            "route_in_process_us": round(whole, 1), "n": n, "repeat": repeat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="calls per timed run (default 1000)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per stage; the median is reported (default 5)")
    ap.add_argument("--overhead-ms", type=float, default=6.4,
                    help="router overhead at p50 the shares are of (docs/benchmarks.md, default 6.4 ms)")
    ap.add_argument("--own-ms", type=float, default=1.1,
                    help="the router's own part of it, beside Ray Serve's proxy hop (default 1.1 ms)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.n < 1 or args.repeat < 1:
        ap.error("--n and --repeat must be >= 1")
    out = measure(args.n, args.repeat)
    out.update(overhead_ms=args.overhead_ms, own_ms=args.own_ms)
    print(f"{'path':<5} {'stage':<84} {'us/req':>8} {'of ' + str(args.overhead_ms) + ' ms':>9} "
          f"{'of ' + str(args.own_ms) + ' ms':>9}")
    for s in out["stages"]:
        print(f"{s['path']:<5} {s['stage']:<84} {s['us']:>8.1f} {s['us'] / (args.overhead_ms * 10):>8.1f}% "
              f"{s['us'] / (args.own_ms * 10):>8.1f}%")
    w = out["route_in_process_us"]
    print(f"{'core':<5} {'whole RouterCore.route in process (validate, plan, direct, pool call, trace)':<84} {w:>8.1f} "
          f"{w / (args.overhead_ms * 10):>8.1f}% {w / (args.own_ms * 10):>8.1f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
