"""What the OpenAI HTTP ingress costs next to the gRPC ingress: the same greedy requests to the same
router deployment (one RouterIngress replica serves both) through Ray Serve's gRPC proxy and through
its HTTP proxy (POST /v1/chat/completions, non-streaming, one keep-alive connection), interleaved.

    python ops/bench/http_overhead.py                         # starts a worker + a router itself
    python ops/bench/http_overhead.py --n 100 --sizes 1,32 --out runs/bench/http_overhead.json
    python ops/bench/http_overhead.py --grpc 127.0.0.1:9000 --http http://127.0.0.1:8000  # running ones

Prints p50/p95 per ingress and request size, the ratio http/grpc and the paired median difference.
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
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import router_pb2_grpc as rpb_grpc  # noqa: E402
from thinkroute.v1 import worker_pb2 as wpb  # noqa: E402

QUESTION = "What is 12 plus 30?"


def grpc_call(stub, model: str, max_tokens: int) -> tuple[float, str]:
    req = rpb.RouteRequest(messages=[wpb.ChatMessage(role="user", content=QUESTION)], model=model,
                           max_tokens=max_tokens)
    t = time.perf_counter()
    resp = stub.Generate(req, metadata=[("application", "thinkroute")], timeout=300)
    return (time.perf_counter() - t) * 1e3, resp.text


def http_call(client: httpx.Client, model: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": max_tokens}
    t = time.perf_counter()
    resp = client.post("/v1/chat/completions", json=body)
    ms = (time.perf_counter() - t) * 1e3
    resp.raise_for_status()
    return ms, resp.json()["choices"][0]["message"]["content"]


def pct(xs, q):
    return float(np.percentile(np.array(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="requests per ingress and size (default 60)")
    ap.add_argument("--sizes", default="1,32", help="max_tokens values, comma-separated (default 1,32)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--grpc", default=None, help="use this running router's gRPC proxy (host:port)")
    ap.add_argument("--http", default=None, help="... and its HTTP proxy (http://host:port)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"),
                    help="HTTP API key (default $OPENAI_API_KEY; a router with no keys serves loopback clients)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    stop = lambda: None  # noqa: E731
    if args.grpc and args.http:
        gaddr, haddr = args.grpc, args.http
    else:
        from stack import start_stack

        st = start_stack(args.backend, args.model, "http_overhead")
        gaddr, haddr, stop = st.grpc, st.http, st.stop
    results = {}
    try:
        gstub = rpb_grpc.RouterStub(grpc.insecure_channel(gaddr))
        hclient = httpx.Client(base_url=haddr, timeout=300, headers={"authorization": f"Bearer {args.api_key}"})
        for size in [int(s) for s in args.sizes.split(",")]:
            for _ in range(args.warmup):
                grpc_call(gstub, args.model, size)
                http_call(hclient, args.model, size)
            g, h, same = [], [], 0
            for i in range(args.n):  # interleaved: both ingresses see the same machine state
                if i % 2 == 0:
                    gms, gtext = grpc_call(gstub, args.model, size)
                    hms, htext = http_call(hclient, args.model, size)
                else:
                    hms, htext = http_call(hclient, args.model, size)
                    gms, gtext = grpc_call(gstub, args.model, size)
                g.append(gms)
                h.append(hms)
                same += gtext == htext
                print(f"\r max_tokens={size}: {i + 1}/{args.n}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            results[size] = {
                "grpc_p50_ms": pct(g, 50), "grpc_p95_ms": pct(g, 95),
                "http_p50_ms": pct(h, 50), "http_p95_ms": pct(h, 95),
                "ratio_p50": pct(h, 50) / pct(g, 50), "ratio_p95": pct(h, 95) / pct(g, 95),
                "median_paired_diff_ms": statistics.median([b - a for a, b in zip(g, h)]),
                "identical_text": same / args.n,
            }
        hclient.close()
    finally:
        stop()
    print(f"\nHTTP (OpenAI) vs gRPC ingress, {args.model} ({args.backend}), n={args.n} per cell, interleaved\n")
    print(f"{'max_tokens':>10} | {'gRPC p50':>8} {'p95':>8} | {'HTTP p50':>8} {'p95':>8} | {'ratio p50':>9} "
          f"{'p95':>6} | {'paired med diff':>15} | {'same text':>9}")
    for size, r in results.items():
        print(f"{size:>10} | {r['grpc_p50_ms']:>8.1f} {r['grpc_p95_ms']:>8.1f} | {r['http_p50_ms']:>8.1f} "
              f"{r['http_p95_ms']:>8.1f} | {r['ratio_p50']:>9.3f} {r['ratio_p95']:>6.3f} | "
              f"{r['median_paired_diff_ms']:>12.1f} ms | {r['identical_text']:>9.0%}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "backend": args.backend, "n": args.n,
                                              "cpu_count": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
