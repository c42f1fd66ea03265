"""The embedded default's shipped policy artifact, reproducible by one command:

    python -m router.learn.embedded --out router/artifacts/embedded

1. a graded arithmetic set (`arith_set`: seeded; +, -, x on 1- to 3-digit numbers, 4-shot prompts, the
   gold answer an integer), written as JSON lines;
2. `thinkroute serve` (the embedded default: SmolLM2-135M drafter and Gemma 3 270M reasoner on vLLM), then
   every question once per policy candidate with that plan fixed (greedy, 12 tokens), graded by the last
   integer of the answer; one outcome row per question in the format `thinkroute train` reads (per plan
   is_correct, answer, tokens per model, prompt tokens);
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
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOTS = {"+": [(3, 4), (12, 5), (31, 18), (6, 9)], "-": [(9, 4), (17, 5), (52, 31), (8, 6)],
         "*": [(3, 4), (12, 5), (7, 8), (11, 6)]}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
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
    nums = re.findall(r"-?\d[\d,]*", text)
    return bool(nums) and nums[0].replace(",", "") == gold


def collect(rows: list[dict], address: str, config, out: Path, concurrency: int = 6, budget_s: float = 600.0) -> list[dict]:
    """Every row once per candidate plan, through the router (per plan is_correct, answer, tokens per model),
    appended to `out` as each row completes. Resumable: rows already in `out` are skipped. Stops starting
    rows after `budget_s` seconds; returns every row in `out`."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from tqdm import tqdm

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    stub = rpb_grpc.RouterStub(grpc.insecure_channel(address))
    done = {json.loads(x)["id"] for x in out.read_text().splitlines() if x.strip()} if out.exists() else set()
    deadline = time.monotonic() + budget_s

    def one(row: dict) -> dict | None:
        if time.monotonic() > deadline:
            return None
        rec = {k: row[k] for k in ("question", "answer", "task", "id")}
        for plan, cand in config.policy.candidates.items():
            req = rpb.RouteRequest(request_id=f"emb-{row['id']}-{plan}", query=row["question"], max_tokens=12,
                                   temperature=0.0, strategy=cand.strategy, model=cand.model or "")
            t = time.monotonic()
            resp = stub.Generate(req, metadata=[("application", "thinkroute")], timeout=300)
            rec[plan] = {"is_correct": grade(resp.text, row["answer"]), "answer": resp.text,
                         "tokens": {u.model: u.generated_tokens for u in resp.trace.usage},
                         "prompt_tokens": max((u.prompt_tokens for u in resp.trace.usage), default=0),
                         "latency_ms": (time.monotonic() - t) * 1e3}
        return rec

    todo = [r for r in rows if r["id"] not in done]
    with ThreadPoolExecutor(concurrency) as ex, out.open("a") as f:
        for rec in tqdm(ex.map(one, todo), total=len(todo), desc="collect"):
            if rec is not None:
                f.write(json.dumps(rec) + "\n")
                f.flush()
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="router/artifacts/embedded", help="artifact directory")
    ap.add_argument("--work", default="runs/embedded_artifact", help="where the data, outcomes and logs go")
    ap.add_argument("--n", type=int, default=108, help="questions (default 108: 12 per operation and digit count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--outcomes", help="skip collection: train on this outcome file")
    ap.add_argument("--collect-only", action="store_true", help="stop after writing the outcome file")
    ap.add_argument("--budget-s", type=float, default=600.0, help="stop starting questions after this many seconds "
                    "of collection (a re-run resumes; default 600)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))
    from router.config import load_config

    work = (REPO / args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(overrides={"policy.artifact": None})
    outcomes = Path(args.outcomes) if args.outcomes else work / "outcomes.jsonl"
    if not args.outcomes:
        rows = arith_set(args.n, args.seed)
        (work / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ready = work / "ready"
        ready.unlink(missing_ok=True)
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import free_port

        import yaml

        cfg = yaml.safe_load((REPO / "router/configs/embedded.yaml").read_text())
        cfg["policy"].pop("artifact", None)
        cfg["serve"] = {**cfg["serve"], "grpc_port": free_port(), "http_port": free_port()}
        cfg["redis"] = {**cfg["redis"], "port": free_port()}
        cfg["run_dir"] = str(work / "serve")
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        log = open(work / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(work / "config.yaml"),
                                 "--ready-file", str(ready)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = time.monotonic()
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() - t0 > 900:
                    raise SystemExit(f"the embedded stack did not start (see {work / 'serve.log'})")
                time.sleep(2)
            got = collect(rows, ready.read_text().strip(), config, outcomes, budget_s=args.budget_s)
        finally:
            import signal

            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        for plan in config.policy.candidates:
            acc = sum(r[plan]["is_correct"] for r in got) / len(got)
            print(f"{plan:12s} accuracy {100 * acc:.1f}% on {len(got)} questions", file=sys.stderr)
    if args.collect_only:
        return 0
    cmd = [sys.executable, "-m", "router.cli", "train", "--outcomes", str(outcomes), "--out", args.out, "--no-progress", *TRAIN_ARGS]
    print("+ " + " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.run(cmd, cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
