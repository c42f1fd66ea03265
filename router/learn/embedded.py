"""The embedded default's shipped policy artifact, reproducible by one command:

    python -m router.learn.embedded --out router/artifacts/embedded

1. a graded arithmetic set (`arith_set`: seeded; +, -, x on 1- to 3-digit numbers, 4-shot prompts, the
   gold answer an integer; the same rows as `ops/data/arith.py --n N --seed S`), written as JSON lines;
2. `thinkroute serve` (the embedded default, with priors: SmolLM2-135M drafter and Gemma 3 270M reasoner on
   vLLM, Ray Serve, Redis), then every question once per policy candidate with that plan fixed (greedy,
   12 tokens), through `thinkroute collect`'s machinery (router/collect/runner.py), graded `first_number`
   (the first number of the answer); one outcome row per question in the format `thinkroute train` reads
   (per plan is_correct, answer, tokens per model, prompt tokens, cost, latency, TTFT). Resumable: a re-run
   of the same command skips the questions already complete (`--budget-s` spreads it over several runs);
3. `thinkroute train` on those outcomes with the drafter's own hidden state (last layer, last token) and its
   next-token uncertainty, in-process from the same weights, PCA 16: a probe of whether each plan, the
   drafter's own answer first of all, will be right.

The label that means something here is the drafter's own correctness (a tiny model is right on easy sums and
wrong on hard ones, and knows a little of which); the other plans' labels are measured the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOTS = {"+": [(3, 4), (12, 5), (31, 18), (6, 9)], "-": [(9, 4), (17, 5), (52, 31), (8, 6)],
         "*": [(3, 4), (12, 5), (7, 8), (11, 6)]}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
#: max_tokens per request: the gold answers have at most 6 digits; the first number of the answer is graded.
MAX_TOKENS = 12
TRAIN_ARGS = ["--layers", "-1", "--pooling", "last", "--max-tokens", "64", "--uncertainty", "--pca-dim", "16", "--cv", "5"]


def arith_set(n: int = 108, seed: int = 0) -> list[dict]:
    """`n` graded questions: operation x digits (1-3) in equal shares, 4-shot, seeded."""
    rng = random.Random(seed)
    grades = [(op, d) for op in ("+", "-", "*") for d in (1, 2, 3)]
    rows = []
    for i in range(n):
        op, d = grades[i % len(grades)]
        a, b = rng.randint(10 ** (d - 1), 10 ** d - 1), rng.randint(10 ** (d - 1), 10 ** d - 1)
        if op == "-" and b > a:
            a, b = b, a
        sym = "x" if op == "*" else op
        shots = "\n".join(f"{x} {sym} {y} = {OPS[op](x, y)}" for x, y in SHOTS[op])
        rows.append({"question": f"Answer with the number only.\n{shots}\n{a} {sym} {b} =", "answer": str(OPS[op](a, b)),
                     "task": f"{op}{d}", "id": i})
    return rows


def grade(text: str, gold: str) -> bool:
    """The set's grader: `thinkroute collect`'s `first_number` (the first number of the answer is the gold one)."""
    from router.collect.graders import grade_first_number

    return grade_first_number(text, gold)[0]


def collect(rows: list[dict], address: str, config, out: Path, concurrency: int = 6, budget_s: float | None = 600.0,
            max_tokens: int = MAX_TOKENS, progress: bool = True) -> tuple[list[dict], "CollectStats"]:
    """Every row once per candidate plan through the router at `address`, with `thinkroute collect`'s machinery
    (router/collect/runner.py: plan fixed per request, greedy, graded `first_number`, tokens per model, cost,
    latency and TTFT from the trace), appended to `out` as each row completes. Resumable: rows already in `out`
    are skipped. No request is started after `budget_s` seconds. Returns the complete rows of `rows` (in order)
    and the run's counts."""
    import asyncio

    from tqdm import tqdm

    from router.collect.dataset import LabelledQuery
    from router.collect.outcomes import OutcomeFile
    from router.collect.runner import CollectStats, collect as run_collect  # noqa: F401 - CollectStats: the return type

    queries = [LabelledQuery(r["question"], r["answer"], r["task"], "first_number") for r in rows]
    of = OutcomeFile(out, "question")
    bar = tqdm(total=0, desc="collect", unit="req", disable=not progress)

    def set_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    try:
        stats = asyncio.run(run_collect(queries, dict(config.policy.candidates), dict(config.policy.prices), of, address,
                                        [("application", config.serve.app_name)], concurrency=concurrency,
                                        timeout_s=config.router.request_timeout_s + 5.0, max_tokens=max_tokens,
                                        on_done=bar.update, on_total=set_total, stop_after_s=budget_s))
    finally:
        bar.close()
        of.close()
    return [of.rows[q.text] for q in queries if q.text in of.rows], stats


def complete_rows(rows: list[dict], config, out: Path) -> list[dict]:
    """The rows of `rows` that `out` already holds with every candidate plan (in order)."""
    if not out.exists():
        return []
    from router.collect.outcomes import OutcomeFile

    of = OutcomeFile(out, "question")
    of.close()
    plans = set(config.policy.candidates)
    return [of.rows[r["question"]] for r in rows if plans <= of.done_plans(r["question"])]


def start_stack(work: Path) -> tuple[subprocess.Popen, str]:
    """`thinkroute serve` on the embedded default with priors (the plans are fixed per request: no probe needed),
    on free ports, logging to `work/serve.log`; returns the process and the router's gRPC address."""
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import free_port

    cfg = yaml.safe_load((REPO / "router/configs/embedded.yaml").read_text())
    cfg["policy"]["artifact"] = None
    cfg["serve"] = {**cfg["serve"], "grpc_port": free_port(), "http_port": free_port()}
    cfg["redis"] = {**cfg["redis"], "port": free_port()}
    cfg["run_dir"] = str(work / "serve")
    # Collection on a busy machine: a worker slow to stream (a 256-token hawkeye step beside other load) is not a
    # dead one; the defaults (15 s stall, 3 x 2 s health checks) took the drafter out of traffic under load 20.
    cfg["router"] = {**cfg["router"], "stream_stall_timeout_s": 180, "health_timeout_s": 30, "unhealthy_after": 10}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    from router.serve_process import start_serve

    return start_serve(work / "config.yaml", work, timeout_s=900)


def stop_stack(proc: subprocess.Popen) -> None:
    from router.serve_process import stop_serve

    stop_serve(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="router/artifacts/embedded", help="artifact directory")
    ap.add_argument("--work", default="runs/embedded_artifact", help="where the data, outcomes and logs go")
    ap.add_argument("--n", type=int, default=108, help="questions (default 108: 12 per operation and digit count); "
                    "the first N rows of the seeded set, so a smaller N reuses a larger run's outcomes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=6, help="requests in flight (default 6)")
    ap.add_argument("--outcomes", help="skip collection: train on this outcome file (e.g. the shipped "
                    "router/artifacts/embedded/outcomes.jsonl)")
    ap.add_argument("--collect-only", action="store_true", help="stop after writing the outcome file")
    ap.add_argument("--budget-s", type=float, default=None, help="start no request after this many seconds of "
                    "collection; a re-run of the same command resumes (default: no limit)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))
    from router.config import load_config

    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(overrides={"policy.artifact": None})
    rows = arith_set(args.n, args.seed)
    if args.outcomes:
        outcomes = Path(args.outcomes)
    else:
        (work / "arith.jsonl").write_text("".join(json.dumps({**r, "grader": "first_number"}) + "\n" for r in rows))
        got = complete_rows(rows, config, work / "outcomes.jsonl")
        if len(got) < len(rows):  # something left to collect: start the stack
            t0 = time.monotonic()
            proc, address = start_stack(work)
            print(f"embedded stack up in {time.monotonic() - t0:.0f} s at {address}", file=sys.stderr)
            try:
                got, stats = collect(rows, address, config, work / "outcomes.jsonl", args.concurrency, args.budget_s,
                                     progress=not args.no_progress)
            finally:
                stop_stack(proc)
            print(f"{len(got)} of {len(rows)} questions complete ({stats.requests} requests, {stats.failed} failed, "
                  f"{stats.not_started} not started) in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            for plan, code, msg in stats.errors:
                print(f"  failed: plan {plan}: {code}: {msg[:300]}", file=sys.stderr)
        for plan in config.policy.candidates:
            acc = sum(r[plan]["is_correct"] for r in got) / max(1, len(got))
            print(f"{plan:12s} accuracy {100 * acc:.1f}% on {len(got)} questions", file=sys.stderr)
        if len(got) < len(rows):
            print(f"incomplete: re-run the same command to collect the other {len(rows) - len(got)} questions",
                  file=sys.stderr)
            return 3
        # exactly the rows of this set (a larger earlier run may have left more in outcomes.jsonl), kept beside
        # the artifact: `--outcomes <out>/outcomes.jsonl` retrains it without a stack
        outcomes = Path(args.out) / "outcomes.jsonl"
        outcomes.parent.mkdir(parents=True, exist_ok=True)
        outcomes.write_text("".join(json.dumps(r) + "\n" for r in got))
    if args.collect_only:
        return 0
    cmd = [sys.executable, "-m", "router.cli", "train", "--outcomes", str(outcomes), "--out", args.out, "--no-progress",
           *TRAIN_ARGS]
    print("+ thinkroute " + " ".join(cmd[3:]), file=sys.stderr)
    return subprocess.run(cmd, cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
