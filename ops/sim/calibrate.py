"""Measure what the autoscaling simulator needs from this machine: per model, a worker's cold start and its capacity.

For each model, one at a time (so they do not share the CPU): start `thinkroute worker` (vLLM backend by default)
and time process start -> serving (READY: engine loaded, gRPC up) = the cold start a new replica costs; then send
greedy "Write a long story" prompts (`--max-tokens` each) at concurrency 1 and at `--concurrency`, and record
generated tokens/s, mean time to first token and per-request latency. Writes JSON for ops/sim/autoscale.py.

    python ops/sim/calibrate.py --out docs/bench/autoscale_calibration.json

Starts real model processes: run it alone on the machine (it takes about 3-4 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city", "a forest", "a river", "a mountain",
          "a train", "a garden", "a violin", "a desert", "a comet", "a bakery", "a library", "a storm"]


def start_worker(model: str, backend: str, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    ready = log.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "worker", "--model", model, "--backend", backend,
                             "--port", str(port), "--ready-file", str(ready), "--kv-cache-gib", "1"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"worker {model} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() - t0 > 600:
            raise TimeoutError(f"worker {model} not ready after 600 s")
        time.sleep(0.2)
    return proc, time.monotonic() - t0


async def load(address: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    from router.worker_client import WorkerClient
    from workers.types import ChatMessage, PromptInput, Sampling

    client = WorkerClient(address)
    sem = asyncio.Semaphore(concurrency)
    results = []

    async def one(i: int) -> None:
        prompt = PromptInput(messages=(ChatMessage(role="user", content=f"Write a long story about {TOPICS[i % len(TOPICS)]}."),))
        async with sem:
            t0 = time.perf_counter()
            first, tokens = 0.0, 0
            async for msg in client.generate(prompt, Sampling(max_tokens=max_tokens), timeout=600):
                if msg.token_ids and not first:
                    first = time.perf_counter() - t0
                tokens += len(msg.token_ids)
            results.append((first, time.perf_counter() - t0, tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - t0
    await client.close()
    n = len(results)
    return {"concurrency": concurrency, "requests": n, "generated_tokens": sum(r[2] for r in results),
            "tokens_per_s": sum(r[2] for r in results) / wall, "mean_ttft_s": sum(r[0] for r in results) / n,
            "mean_latency_s": sum(r[1] for r in results) / n, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma-separated registry names")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"], help="worker backend (default vllm)")
    p.add_argument("--concurrency", type=int, default=16, help="the batched level (default 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="generated tokens per request (default 64)")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    from router.launcher import free_port

    out = {"backend": args.backend, "max_tokens": args.max_tokens, "machine": f"{os.cpu_count()} CPU cores",
           "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            port = free_port()
            print(f"{model}: starting worker ...", file=sys.stderr, flush=True)
            proc, cold = start_worker(model, args.backend, port, Path(tmp) / f"{model}.log")
            try:
                address = f"127.0.0.1:{port}"
                asyncio.run(load(address, 2, 2, 8))  # warm-up: first-call costs are not capacity
                single = asyncio.run(load(address, 1, 3, args.max_tokens))
                batched = asyncio.run(load(address, args.concurrency, args.concurrency, args.max_tokens))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out["models"][model] = {"cold_start_s": cold, "single": single, "batched": batched}
            print(f"{model}: cold start {cold:.1f} s; {single['tokens_per_s']:.1f} tok/s alone, "
                  f"{batched['tokens_per_s']:.1f} tok/s at {args.concurrency}", file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
