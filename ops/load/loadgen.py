"""Open-loop load generator for thinkroute: Poisson arrivals or bursts, over gRPC or HTTP, loopback only.

Open loop: every request is sent at its scheduled arrival time whether or not earlier ones have
answered, so a slow server meets a growing backlog (as real clients would make), not a politely
slowed-down client. Each run is bounded twice: `max_requests` arrivals and `duration_s` of
arrivals, and every request carries a deadline, so a run always ends.

    python ops/load/loadgen.py --grpc 127.0.0.1:9000 --rate 2 --duration 30
    python ops/load/loadgen.py --http http://127.0.0.1:8000 --arrival burst --burst-size 32 --bursts 2
    python ops/load/loadgen.py --grpc 127.0.0.1:9000 --sweep 0.5,1,2,4 --slo-ms 4000 --out runs/load/sweep.json

Reported per run: sent, status counts (OK, RESOURCE_EXHAUSTED / 429, ...), Retry-After values seen,
latency p50/p95/p99 of successful requests, throughput (OK per second) and goodput (OK within the
latency SLO per second). A sweep reports the highest offered rate whose p95 meets the SLO with
under 1% errors ("throughput at the SLO").
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "What is 12 plus 30?", "Name three colors.", "What is the capital of France?", "Say hello in Spanish.",
    "How many legs does a spider have?", "What is 7 times 6?", "Name a prime number.", "What color is the sky?",
]


def require_loopback(host: str) -> None:
    """Refuse to send load anywhere but this machine."""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise SystemExit(f"cannot resolve {host!r}: {e}") from e
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(f"{host!r} is not a loopback address ({sorted(addrs)}): this tool only loads this machine")


def arrivals(kind: str, rate: float, duration_s: float, max_requests: int, seed: int = 0,
             burst_size: int = 16, burst_every_s: float = 10.0) -> list[float]:
    """Offsets (seconds from the start) at which requests are sent.

    poisson: exponential gaps with mean 1/rate; burst: `burst_size` requests at once every
    `burst_every_s`. At most `max_requests`, all before `duration_s`.
    """
    rng = random.Random(seed)
    out: list[float] = []
    if kind == "poisson":
        if rate <= 0:
            raise ValueError("--rate must be > 0 for Poisson arrivals")
        t = rng.expovariate(rate)
        while t < duration_s and len(out) < max_requests:
            out.append(t)
            t += rng.expovariate(rate)
    elif kind == "burst":
        t = 0.0
        while t < duration_s and len(out) < max_requests:
            out.extend([t] * min(burst_size, max_requests - len(out)))
            t += burst_every_s
    else:
        raise ValueError(f"unknown arrival process {kind!r}: poisson or burst")
    return out


@dataclass
class Outcome:
    sent_at: float
    latency_ms: float
    status: str            # "OK" or a gRPC status name / "HTTP <code>"
    retry_after: str = ""  # Retry-After header / metadata, when the server shed the request
    tokens: int = 0


@dataclass
class RunResult:
    target: str
    arrival: str
    offered_rate: float
    duration_s: float
    sent: int
    statuses: dict[str, int]
    retry_after: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    goodput_rps: float
    slo_ms: float
    wall_s: float
    outcomes: list[dict] = field(default_factory=list)

    def meets_slo(self) -> bool:
        errors = self.sent - self.statuses.get("OK", 0)
        return self.sent > 0 and self.p95_ms <= self.slo_ms and errors <= 0.01 * self.sent


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def grpc_sender(address: str, max_tokens: int, timeout_s: float, extra: dict | None = None
                ) -> tuple[Callable[[int], Awaitable[Outcome]], Callable[[], Awaitable[None]]]:
    import grpc

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    require_loopback(address.rsplit(":", 1)[0].strip("[]"))
    channel = grpc.aio.insecure_channel(address)
    stub = rpb_grpc.RouterStub(channel)
    md = [("application", "thinkroute")] + list((extra or {}).get("metadata", []))

    async def send(i: int) -> Outcome:
        t0 = time.perf_counter()
        try:
            r = await stub.Generate(rpb.RouteRequest(query=QUESTIONS[i % len(QUESTIONS)], max_tokens=max_tokens,
                                                     **(extra or {}).get("fields", {})),
                                    metadata=md, timeout=timeout_s)
            toks = sum(c.generated_tokens for c in r.trace.calls)
            return Outcome(0.0, (time.perf_counter() - t0) * 1e3, "OK", tokens=toks)
        except grpc.aio.AioRpcError as e:
            retry = dict(e.trailing_metadata() or ()).get("retry-after", "")
            return Outcome(0.0, (time.perf_counter() - t0) * 1e3, e.code().name, retry_after=str(retry))

    return send, channel.close


def http_sender(base_url: str, max_tokens: int, timeout_s: float, extra: dict | None = None
                ) -> tuple[Callable[[int], Awaitable[Outcome]], Callable[[], Awaitable[None]]]:
    import httpx

    host = urlparse(base_url).hostname or ""
    require_loopback(host)
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s,
                               limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
    headers = dict((extra or {}).get("headers", {}))

    async def send(i: int) -> Outcome:
        t0 = time.perf_counter()
        body = {"model": "thinkroute", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        try:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
        except httpx.TimeoutException:
            return Outcome(0.0, (time.perf_counter() - t0) * 1e3, "TIMEOUT")
        except httpx.HTTPError as e:
            return Outcome(0.0, (time.perf_counter() - t0) * 1e3, f"CONNECTION {type(e).__name__}")
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code == 200:
            return Outcome(0.0, ms, "OK", tokens=int(r.json().get("usage", {}).get("completion_tokens", 0)))
        return Outcome(0.0, ms, f"HTTP {r.status_code}", retry_after=r.headers.get("retry-after", ""))

    return send, client.aclose


async def run_once(send: Callable[[int], Awaitable[Outcome]], schedule: list[float], *, target: str, arrival: str,
                   rate: float, duration_s: float, slo_ms: float, keep_outcomes: bool = False) -> RunResult:
    """Fire `send(i)` at each scheduled offset (open loop) and gather the outcomes."""
    start = time.perf_counter()

    async def at(i: int, offset: float) -> Outcome:
        delay = offset - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        o = await send(i)
        o.sent_at = offset
        return o

    outcomes = await asyncio.gather(*(at(i, t) for i, t in enumerate(schedule)))
    wall = time.perf_counter() - start
    ok = [o.latency_ms for o in outcomes if o.status == "OK"]
    statuses: dict[str, int] = {}
    retry: dict[str, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
        if o.retry_after:
            retry[o.retry_after] = retry.get(o.retry_after, 0) + 1
    span = max(duration_s, schedule[-1] if schedule else 0.0, 1e-9)
    return RunResult(
        target=target, arrival=arrival, offered_rate=len(schedule) / span, duration_s=span, sent=len(schedule),
        statuses=statuses, retry_after=retry, p50_ms=_pct(ok, 50), p95_ms=_pct(ok, 95), p99_ms=_pct(ok, 99),
        throughput_rps=len(ok) / wall, goodput_rps=sum(1 for x in ok if x <= slo_ms) / wall, slo_ms=slo_ms,
        wall_s=wall, outcomes=[asdict(o) for o in outcomes] if keep_outcomes else [],
    )


def table(results: list[RunResult]) -> str:
    head = ("| target | arrivals | offered req/s | sent | OK | shed / errors | Retry-After | p50 ms | p95 ms | "
            "p99 ms | throughput req/s | goodput req/s (SLO) |\n|" + "---|" * 12)
    rows = []
    for r in results:
        other = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()) if k != "OK") or "-"
        retry = ", ".join(f"{k} s x{v}" for k, v in sorted(r.retry_after.items())) or "-"
        rows.append(f"| {r.target} | {r.arrival} | {r.offered_rate:.2f} | {r.sent} | {r.statuses.get('OK', 0)} | "
                    f"{other} | {retry} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.throughput_rps:.2f} | "
                    f"{r.goodput_rps:.2f} ({r.slo_ms:.0f} ms) |")
    return "\n".join([head, *rows])


def make_sender(args, extra: dict | None = None):
    if args.grpc:
        return ("grpc",) + grpc_sender(args.grpc, args.max_tokens, args.timeout, extra)
    return ("http",) + http_sender(args.http, args.max_tokens, args.timeout, extra)


async def amain(args) -> list[RunResult]:
    target, send, close = make_sender(args)
    results = []
    try:
        rates = [float(x) for x in args.sweep.split(",")] if args.sweep else [args.rate]
        for rate in rates:
            schedule = arrivals(args.arrival, rate, args.duration, args.max_requests, args.seed, args.burst_size,
                                args.burst_every)
            r = await run_once(send, schedule, target=target, arrival=args.arrival, rate=rate,
                               duration_s=args.duration, slo_ms=args.slo_ms)
            print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
            results.append(r)
    finally:
        await close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--grpc", help="Ray Serve gRPC proxy host:port (loopback only)")
    where.add_argument("--http", help="HTTP base URL, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--arrival", choices=["poisson", "burst"], default="poisson")
    p.add_argument("--rate", type=float, default=1.0, help="Poisson: mean requests per second")
    p.add_argument("--sweep", default="", help="comma-separated Poisson rates, one run each")
    p.add_argument("--burst-size", type=int, default=16)
    p.add_argument("--burst-every", type=float, default=10.0, help="seconds between bursts")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per run (bound)")
    p.add_argument("--max-requests", type=int, default=500, help="arrivals per run (bound)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of each request, seconds")
    p.add_argument("--slo-ms", type=float, default=5000.0, help="latency SLO for goodput and the sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    results = asyncio.run(amain(args))
    print(table(results))
    if args.sweep:
        good = [r for r in results if r.meets_slo()]
        best = max(good, key=lambda r: r.throughput_rps) if good else None
        print(f"throughput at the SLO (p95 <= {args.slo_ms:.0f} ms, < 1% errors): "
              + (f"{best.throughput_rps:.2f} req/s (offered {best.offered_rate:.2f})" if best else "none of the rates"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
