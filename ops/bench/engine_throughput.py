"""Engine throughput: hf vs vllm on the same prompts, at several concurrency levels, in one run.

For each model: start the vllm engine (timed), load its hf HiddenState model (timed; the
same `HfEngine` class the `hf` backend serves with), measure the resident memory of the
worker (this process + the vLLM engine-core processes, PSS), then for each backend and
each concurrency level run `max(concurrency, --min-requests)` greedy requests with at most
`concurrency` in flight and report output tokens/s and p50/p95 request latency (submit to
last chunk, queueing included: the hf backend runs one request at a time). Also times
Score with candidates inside and outside the top-k (the second `logprob_token_ids` pass).

    python ops/bench/engine_throughput.py --out runs/bench/engine.json

Results and the exact command go to docs/bench/engine.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TOPICS = ["a lighthouse", "the ocean", "a dragon", "a clockmaker", "the desert", "a robot", "winter",
          "a library", "the mountains", "a train journey", "a garden", "the stars", "a bakery", "a storm",
          "an island", "a violin", "a fox", "the city at night", "a river", "a castle", "a comet",
          "a market", "the forest", "a ship", "a painter", "a snowstorm", "a museum", "a bridge",
          "an orchard", "a volcano", "a glacier", "a kite"]


def _pss_mib() -> float:
    """PSS of this process and all its descendants (the worker: frontend + vLLM engine core)."""
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def _rss_mib() -> float:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def _prompts(tokenizer, n: int, chat: bool, bos: int | None) -> list[list[int]]:
    out = []
    for i in range(n):
        text = f"Write a long story about {TOPICS[i % len(TOPICS)]}."
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if bos is not None and ids[0] != bos:
            ids = [bos, *ids]
        out.append(ids)
    return out


async def _level(engine, prompts: list[list[int]], concurrency: int, max_tokens: int, tag: str) -> dict:
    from workers.types import Sampling

    sem = asyncio.Semaphore(concurrency)
    latencies, tokens = [], []

    async def one(i: int, ids: list[int]) -> None:
        async with sem:
            t0 = time.perf_counter()
            final = None
            async for chunk in engine.generate(f"{tag}-{i}", ids, Sampling(max_tokens=max_tokens)):
                final = chunk.final or final
            latencies.append(time.perf_counter() - t0)
            tokens.append(final.generated_tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    return {
        "concurrency": concurrency, "requests": len(prompts), "output_tokens": sum(tokens),
        "wall_s": round(wall, 3), "tokens_per_s": round(sum(tokens) / wall, 2),
        "p50_s": round(statistics.median(latencies), 3), "p95_s": round(q[18], 3),
    }


async def _score_timing(engine, prompt: list[int], repeats: int) -> dict:
    """ms per Score call: candidates inside the top-20 (one pass) vs outside (second pass)."""
    res = {}
    for name, cands in (("in_top_k", None), ("outside_top_k", [100, 1000, 5000])):
        if cands is None:
            top = await engine.score(prompt, [], 20, [])
            cands = [t.token_id for t in top.top_next[:3]]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await engine.score(prompt, [], 20, cands)
            times.append((time.perf_counter() - t0) * 1e3)
        res[name + "_ms"] = round(statistics.median(times), 1)
    return res


async def run(args) -> dict:
    from workers.backends import make_engine
    from workers.config import EngineConfig

    levels = [int(c) for c in args.concurrency.split(",")]
    report = {"command": " ".join(sys.argv), "max_tokens": args.max_tokens, "models": {}, "cpu_count": os.cpu_count()}
    started = []  # (model, vllm engine, its hf HiddenState engine)
    base_pss = _pss_mib()
    # 1) Start everything first: start times and memory survive a throughput run cut short.
    for model in args.models.split(","):
        cfg = EngineConfig(model=model, backend="vllm", kv_cache_gib=args.kv_cache_gib, max_num_seqs=max(levels))
        vllm_engine = make_engine(cfg)
        before = _pss_mib()
        t0 = time.perf_counter()
        await vllm_engine.start()
        start_s = time.perf_counter() - t0
        after_vllm = _pss_mib()
        t0 = time.perf_counter()
        from workers.hf_engine import HfEngine  # the `hf` backend's engine on the same weights

        hf = HfEngine(vllm_engine.spec, vllm_engine.model_dir, cfg.model_copy(update={"backend": "hf"}))
        await hf.start()
        hf_load_s = time.perf_counter() - t0
        after_hf = _pss_mib()
        started.append((model, vllm_engine, hf))
        entry = {
            "vllm_start_s": round(start_s, 1), "hf_load_s": round(hf_load_s, 1),
            "vllm_engine_pss_mib": round(after_vllm - before), "hf_model_pss_mib": round(after_hf - after_vllm),
            "kv_cache_gib": args.kv_cache_gib, "results": [],
        }
        report["models"][model] = entry
        _save(args.out, report)
        print(f"{model}: vllm start {start_s:.1f} s (+{entry['vllm_engine_pss_mib']} MiB PSS), "
              f"hf load {hf_load_s:.1f} s (+{entry['hf_model_pss_mib']} MiB)", flush=True)
    report["total_worker_pss_mib"] = round(_pss_mib() - base_pss)
    report["process_pss_mib_all_up"] = round(_pss_mib())
    report["process_rss_mib_all_up"] = round(_rss_mib())
    _save(args.out, report)
    print(f"all engines up: PSS {report['total_worker_pss_mib']} MiB above the bare process, "
          f"RSS {report['process_rss_mib_all_up']} MiB (process tree)", flush=True)
    # 2) Throughput, hf vs vllm, same prompts.
    for model, vllm_engine, hf in started:
        if model not in args.throughput_models.split(","):
            continue
        entry = report["models"][model]
        tok = vllm_engine._tokenizer
        bos = tok.bos_token_id if vllm_engine.spec.prepend_bos else None
        prompts = _prompts(tok, max(max(levels), args.min_requests), vllm_engine.spec.chat, bos)
        await _level(vllm_engine, prompts[:2], 2, 4, "warmup-vllm")
        await _level(hf, prompts[:1], 1, 4, "warmup-hf")
        for backend, engine in (("vllm", vllm_engine), ("hf", hf)):
            for c in levels:
                n = max(c, args.min_requests)
                r = await _level(engine, prompts[:n], c, args.max_tokens, f"{backend}-{c}")
                r["backend"] = backend
                entry["results"].append(r)
                _save(args.out, report)  # partial results survive a timeout
                print(f"  {backend:5s} c={c:<3d} {r['tokens_per_s']:7.1f} tok/s  p50 {r['p50_s']:.2f} s  "
                      f"p95 {r['p95_s']:.2f} s  ({r['requests']} req, {r['output_tokens']} tok, {r['wall_s']:.1f} s)",
                      flush=True)
        entry["score"] = await _score_timing(vllm_engine, prompts[0], 5)
        _save(args.out, report)
        print(f"  score: {entry['score']}", flush=True)
    for _, e, _ in started:
        await e.shutdown()
    return report


def _save(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def _table(report: dict) -> str:
    lines = ["| model | backend | concurrency | requests | output tok/s | p50 latency s | p95 latency s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for model, entry in report["models"].items():
        for r in entry["results"]:
            lines.append(f"| {model} | {r['backend']} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']} | "
                         f"{r['p50_s']} | {r['p95_s']} |")
        by = {(r["backend"], r["concurrency"]): r["tokens_per_s"] for r in entry["results"]}
        for c in sorted({r["concurrency"] for r in entry["results"]}):
            if ("hf", c) in by and by[("hf", c)] > 0:
                lines.append(f"| {model} | vllm/hf | {c} | | {by[('vllm', c)] / by[('hf', c)]:.1f}x | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,gemma3-270m",
                   help="models to start (each: a vllm engine + its hf HiddenState model); memory is measured for all")
    p.add_argument("--throughput-models", default="smollm2-135m",
                   help="models to run the throughput levels on ('none': only start time and memory)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (greedy)")
    p.add_argument("--min-requests", type=int, default=4, help="requests per level: max(concurrency, this)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="VLLM_CPU_KVCACHE_SPACE per engine")
    p.add_argument("--out", type=Path, help="write the full report as JSON here")
    args = p.parse_args()
    report = asyncio.run(run(args))
    print()
    print(_table(report))
    print(f"\nall engines up: worker PSS {report['total_worker_pss_mib']} MiB above the bare process "
          f"({report['process_pss_mib_all_up']} MiB PSS, {report['process_rss_mib_all_up']} MiB RSS in all)")
    if args.out:
        _save(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
