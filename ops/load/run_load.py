"""The load, shedding and soak runs of docs/benchmarks.md, on a stack this script starts and stops.

    python ops/load/run_load.py                        # the whole plan (about 10 minutes)
    python ops/load/run_load.py --soak-s 120 --out runs/load/run.json

Stack (loopback only): one vLLM worker (SmolLM2-135M, `--max-num-seqs 8 --max-queue 8`, so the worker's
bounded queue is reachable on 2 cores) and the Ray Serve router (gRPC + HTTP proxies), started the
same way as the benchmarks' ops/bench/stack.py. Phases, each bounded in requests and seconds:

1. Poisson sweep over gRPC: offered rates `--rates`, `--run-s` seconds each -> throughput at the SLO.
2. The same rate over HTTP (OpenAI API) at the highest rate that met the SLO over gRPC.
3. Bursts over gRPC and HTTP (`--burst` requests at once, twice): what is shed, with which status and
   Retry-After, and whether every request ends within its deadline.
4. Soak: Poisson at about half the SLO rate for `--soak-s` seconds while the RSS of the router replica(s),
   the Ray Serve proxy and the worker (with its engine core) are sampled every `--sample-s` seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import arrivals, grpc_sender, http_sender, run_once, table  # noqa: E402


def start_stack(max_num_seqs: int, max_queue: int):
    from conftest import free_port, start_worker

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import GRPC_SERVICERS, build_app

    model = "smollm2-135m"
    print("starting a vllm worker ...", file=sys.stderr, flush=True)
    w = start_worker(model, "vllm", REPO / "runs" / "load", "--kv-cache-gib", "1", "--max-num-seqs",
                     str(max_num_seqs), "--max-queue", str(max_queue)).wait_ready()
    config = load_config(overrides={"models": {model: {"backend": "vllm", "replicas": 0, "addresses": [w.address]}},
                                    "router.default_model": model, "router.roles": {}, "policy": None})
    gport, hport = free_port(), free_port()

    def stop() -> None:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        w.stop()

    try:
        print("starting Ray Serve ...", file=sys.stderr, flush=True)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=hport),
                    grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=GRPC_SERVICERS))
        serve.run(build_app(config, {model: [w.address]}), name="thinkroute", route_prefix="/")
    except BaseException:
        stop()
        raise
    return w, f"127.0.0.1:{gport}", f"http://127.0.0.1:{hport}", stop


def serve_pids() -> dict[str, list[int]]:
    """Router replica and proxy processes of the local Ray Serve instance (Ray titles an actor's process
    `ray::<class>`, e.g. `ray::ServeReplica:thinkroute:router`, `ray::ProxyActor`)."""
    import psutil

    out: dict[str, list[int]] = {"router": [], "proxy": []}
    for p in psutil.process_iter(["cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:thinkroute:router" in title:
            out["router"].append(p.pid)
        elif "ProxyActor" in title:
            out["proxy"].append(p.pid)
    return out


class RssSampler(threading.Thread):
    """Samples the summed RSS (MiB) of named process groups every `every_s` seconds."""

    def __init__(self, groups: dict[str, list[int]], every_s: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.groups, self.every_s = groups, every_s
        self.samples: list[dict] = []
        self._halt = threading.Event()

    def _rss(self, pids: list[int]) -> float:
        total = 0
        for pid in pids:
            try:
                p = self.psutil.Process(pid)
                total += p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            except self.psutil.Error:
                pass
        return total / 2**20

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._halt.is_set():
            self.samples.append({"t_s": round(time.monotonic() - t0, 1),
                                 **{k: round(self._rss(v), 1) for k, v in self.groups.items()}})
            self._halt.wait(self.every_s)

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join()
        return self.samples


def summarize_rss(samples: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    keys = [k for k in samples[0] if k != "t_s"] if samples else []
    for k in keys:
        xs = [s[k] for s in samples]
        half = len(xs) // 2
        out[k] = {"start_mib": xs[0], "end_mib": xs[-1], "max_mib": max(xs),
                  "first_half_mean_mib": sum(xs[:half]) / max(half, 1),
                  "second_half_mean_mib": sum(xs[half:]) / max(len(xs) - half, 1)}
    return out


async def plan(args, grpc_addr: str, http_url: str, worker_pid: int) -> dict:
    g_send, g_close = grpc_sender(grpc_addr, args.max_tokens, args.timeout)
    h_send, h_close = http_sender(http_url, args.max_tokens, args.timeout)
    out: dict = {}
    try:
        # warm-up: one request each way (first-call costs are not load)
        await g_send(0)
        await h_send(0)
        if args.soak_only:
            return await soak_phase(args, g_send, worker_pid, args.soak_rate, out)
        sweep = []
        for rate in args.rates:
            s = arrivals("poisson", rate, args.run_s, args.max_requests, seed=1)
            sweep.append(await run_once(g_send, s, target="grpc", arrival="poisson", rate=rate, duration_s=args.run_s,
                                        slo_ms=args.slo_ms))
            print(table(sweep[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        good = [r for r in sweep if r.meets_slo()]
        best = max(good, key=lambda r: r.throughput_rps) if good else None
        out["sweep"] = [asdict(r) for r in sweep]
        out["throughput_at_slo_rps"] = best.throughput_rps if best else 0.0
        http_rate = best.offered_rate if best else args.rates[0]
        s = arrivals("poisson", http_rate, args.run_s, args.max_requests, seed=2)
        http_run = await run_once(h_send, s, target="http", arrival="poisson", rate=http_rate, duration_s=args.run_s,
                                  slo_ms=args.slo_ms)
        print(table([http_run]).splitlines()[-1], file=sys.stderr, flush=True)
        out["http"] = asdict(http_run)
        bursts = []
        for target, send in (("grpc", g_send), ("http", h_send)):
            s = arrivals("burst", 0, 2 * args.burst_every, 2 * args.burst, burst_size=args.burst,
                         burst_every_s=args.burst_every)
            bursts.append(await run_once(send, s, target=target, arrival=f"burst {args.burst}", rate=0,
                                         duration_s=2 * args.burst_every, slo_ms=args.slo_ms))
            print(table(bursts[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        out["bursts"] = [asdict(r) for r in bursts]
        soak_rate = max(0.1, (best.offered_rate if best else args.rates[0]) / 2)
        await soak_phase(args, g_send, worker_pid, soak_rate, out)
        out["tables"] = table([*sweep, http_run, *bursts]) + "\n" + out["tables"].splitlines()[-1]
    finally:
        await g_close()
        await h_close()
    return out


async def soak_phase(args, send, worker_pid: int, rate: float, out: dict) -> dict:
    """Poisson load for `--soak-s` seconds while the RSS of router, proxy and worker is sampled."""
    groups = {**serve_pids(), "worker": [worker_pid]}
    sampler = RssSampler(groups, args.sample_s)
    sampler.start()
    s = arrivals("poisson", rate, args.soak_s, 100_000, seed=3)
    soak = await run_once(send, s, target="grpc", arrival="poisson (soak)", rate=rate, duration_s=args.soak_s,
                          slo_ms=args.slo_ms)
    samples = sampler.stop()
    print(table([soak]).splitlines()[-1], file=sys.stderr, flush=True)
    out["soak"] = {"run": asdict(soak), "rss": summarize_rss(samples), "samples": samples}
    out["tables"] = table([soak])
    out.setdefault("throughput_at_slo_rps", float("nan"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="Load, shedding and soak runs on a stack this script starts.")
    p.add_argument("--rates", default="0.5,1,2,4,8", help="Poisson rates of the gRPC sweep (req/s)")
    p.add_argument("--run-s", type=float, default=30.0, help="seconds of arrivals per sweep point")
    p.add_argument("--max-requests", type=int, default=400)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each request (s)")
    p.add_argument("--slo-ms", type=float, default=2000.0)
    p.add_argument("--burst", type=int, default=48, help="requests per burst")
    p.add_argument("--burst-every", type=float, default=10.0)
    p.add_argument("--soak-s", type=float, default=180.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--soak-only", action="store_true", help="skip the sweep, HTTP and burst phases")
    p.add_argument("--soak-rate", type=float, default=0.5, help="Poisson rate of --soak-only (req/s)")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--out", default="runs/load/run.json")
    args = p.parse_args()
    args.rates = [float(x) for x in args.rates.split(",")]
    w, grpc_addr, http_url, stop = start_stack(args.max_num_seqs, args.max_queue)
    try:
        t0 = time.monotonic()
        result = asyncio.run(plan(args, grpc_addr, http_url, w.proc.pid))
        result["wall_s"] = time.monotonic() - t0
        result["args"] = {k: v for k, v in vars(args).items()}
    finally:
        stop()
    print(result["tables"])
    print(f"throughput at the SLO (p95 <= {args.slo_ms:.0f} ms, < 1% errors): {result['throughput_at_slo_rps']:.2f} req/s")
    for k, v in result["soak"]["rss"].items():
        print(f"RSS {k}: start {v['start_mib']:.0f} MiB, end {v['end_mib']:.0f} MiB, max {v['max_mib']:.0f} MiB, "
              f"mean first half {v['first_half_mean_mib']:.0f} -> second half {v['second_half_mean_mib']:.0f} MiB")
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
