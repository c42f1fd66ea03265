"""What the router adds on top of a worker: the same greedy requests sent straight to a worker and
through the Ray Serve router (gRPC proxy -> router replica -> worker), interleaved in one run.

    python ops/bench/router_overhead.py                 # starts a worker + a router itself
    python ops/bench/router_overhead.py --n 100 --out runs/bench/router_overhead.json
    python ops/bench/router_overhead.py --worker 127.0.0.1:50051 --router 127.0.0.1:9000  # running ones

Prints p50/p95 per path and request size, the ratio router/direct, the added milliseconds, and (when it
starts the stack itself) the p50 of a no-op Router.Generate through the same Ray Serve gRPC proxy: the
floor any Ray Serve-hosted router pays, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import router_pb2_grpc as rpb_grpc  # noqa: E402
from thinkroute.v1 import worker_pb2 as pb  # noqa: E402
from thinkroute.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402

QUESTION = "What is 12 plus 30?"


def direct_call(stub, max_tokens: int) -> tuple[float, int]:
    req = pb.GenerateRequest(
        prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=QUESTION)],
                                            add_generation_prompt=True)),
        sampling=pb.SamplingParams(max_tokens=max_tokens, stop=[]))
    t = time.perf_counter()
    msgs = list(stub.Generate(req, timeout=300))
    return (time.perf_counter() - t) * 1e3, msgs[-1].final.usage.generated_tokens


def router_call(stub, model: str, max_tokens: int) -> tuple[float, int]:
    t = time.perf_counter()
    resp = stub.Generate(rpb.RouteRequest(query=QUESTION, model=model, max_tokens=max_tokens),
                         metadata=[("application", "thinkroute")], timeout=300)
    return (time.perf_counter() - t) * 1e3, resp.trace.calls[0].generated_tokens


class EchoRouter:
    """Answers thinkroute.v1.Router/Generate at once: the cost of Ray Serve's gRPC proxy hop alone."""

    async def Generate(self, request, grpc_context=None):
        return rpb.RouteResponse(text="", request_id=request.request_id)


def echo_call(stub) -> tuple[float, int]:
    t = time.perf_counter()
    stub.Generate(rpb.RouteRequest(query=QUESTION), metadata=[("application", "echo")], timeout=60)
    return (time.perf_counter() - t) * 1e3, 0


def pct(xs, q):
    return float(np.percentile(np.array(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="requests per path and size (default 60)")
    ap.add_argument("--sizes", default="1,64", help="max_tokens values, comma-separated (default 1,64)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--worker", default=None, help="use this running worker instead of starting one")
    ap.add_argument("--router", default=None, help="use this running router (must serve --model via --worker)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    stop = lambda: None  # noqa: E731
    if args.worker and args.router:
        waddr, raddr = args.worker, args.router
    else:
        from ray import serve

        from stack import start_stack

        echo = serve.deployment(EchoRouter, name="echo", ray_actor_options={"num_cpus": 0}).bind()
        st = start_stack(args.backend, args.model, "router_overhead", {"echo": echo})
        waddr, raddr, stop = st.worker, st.grpc, st.stop
    results = {}
    try:
        wstub = pb_grpc.WorkerStub(grpc.insecure_channel(waddr))
        rstub = rpb_grpc.RouterStub(grpc.insecure_channel(raddr))
        for size in [int(s) for s in args.sizes.split(",")]:
            for _ in range(args.warmup):
                direct_call(wstub, size)
                router_call(rstub, args.model, size)
            d, r, e = [], [], []
            with_echo = not (args.worker and args.router)
            for i in range(args.n):  # interleaved: every path sees the same machine state
                calls = [("d", lambda: direct_call(wstub, size)), ("r", lambda: router_call(rstub, args.model, size))]
                if with_echo:
                    calls.append(("e", lambda: echo_call(rstub)))
                if i % 2:
                    calls.reverse()
                for name, fn in calls:
                    ms, n_tok = fn()
                    {"d": d, "r": r, "e": e}[name].append(ms)
                print(f"\r max_tokens={size}: {i + 1}/{args.n}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            results[size] = {
                "direct_p50_ms": pct(d, 50), "direct_p95_ms": pct(d, 95),
                "router_p50_ms": pct(r, 50), "router_p95_ms": pct(r, 95),
                "added_p50_ms": pct(r, 50) - pct(d, 50),
                "median_paired_added_ms": statistics.median([b - a for a, b in zip(d, r)]),
                "ratio_p50": pct(r, 50) / pct(d, 50),
                "serve_echo_p50_ms": pct(e, 50) if e else None,
                "serve_echo_p95_ms": pct(e, 95) if e else None,
            }
    finally:
        stop()
    print(f"\nrouter overhead, {args.model} ({args.backend}), n={args.n} per cell, interleaved\n")
    print(f"{'max_tokens':>10} | {'direct p50':>10} {'p95':>8} | {'router p50':>10} {'p95':>8} | "
          f"{'added p50':>9} | {'paired med':>10} | {'ratio':>6} | {'Serve echo p50':>14}")
    for size, r in results.items():
        print(f"{size:>10} | {r['direct_p50_ms']:>10.1f} {r['direct_p95_ms']:>8.1f} | {r['router_p50_ms']:>10.1f} "
              f"{r['router_p95_ms']:>8.1f} | {r['added_p50_ms']:>9.1f} | {r['median_paired_added_ms']:>10.1f} | "
              f"{r['ratio_p50']:>6.3f} | {r['serve_echo_p50_ms'] or float('nan'):>14.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "backend": args.backend, "n": args.n,
                                              "cpu_count": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
