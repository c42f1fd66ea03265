"""`thinkroute bench strategies`: every strategy on the same GSM8K questions, one table.

Runs each pair strategy with the configured pair (`router.roles` small/large), plus `direct` on
the large model (the reference, "reasoner-only") and `direct` on the small model, question by
question through a `WorkerPool` (the same code path the router uses). Workers come from
`--workers NAME=HOST:PORT ...` (e.g. started by `thinkroute serve` or `thinkroute worker`), from
`models.<name>.addresses` in the config, or else are started here for the run and stopped after.

Per strategy it reports accuracy (exact match of the extracted final answer against the GSM8K
`#### number`), mean generated tokens per model, mean wall time, the acceptance rate
(SpecReason) or takeovers per question (Speculative Thinking), and the wall-time and
large-model-token ratios to `direct` on the large model.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAIR_STRATEGIES = ["specreason", "specthink", "cothink", "hawkeye"]
REFERENCE = "direct-large"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (strategies on GSM8K)",
                       description="Benchmarks. `thinkroute bench strategies --help` for the strategy comparison.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH")
    bsub.required = True
    s = bsub.add_parser(
        "strategies", help="compare the pair strategies with direct small/large on GSM8K",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", required=True, help="GSM8K-style JSONL with `question` and `answer` (`#### n`) fields")
    s.add_argument("--limit", type=int, default=20, help="first N questions (default 20)")
    s.add_argument("--strategies", default=",".join(PAIR_STRATEGIES),
                   help=f"comma-separated pair strategies (default {','.join(PAIR_STRATEGIES)}); "
                        "direct on both models always runs")
    s.add_argument("--config", default=None, help="YAML config (default: the embedded one)")
    s.add_argument("--workers", nargs="*", default=None, metavar="NAME=HOST:PORT",
                   help="use running workers instead of starting them (repeat NAME for replicas)")
    s.add_argument("--backend", choices=["vllm", "hf"], default=None,
                   help="engine of the workers started here (default: config); hf needs less memory")
    s.add_argument("--max-tokens", type=int, default=None, help="max generated tokens per answer (default: config)")
    s.add_argument("--option", action="append", default=[], metavar="STRATEGY.KNOB=VALUE",
                   help="strategy knob, VALUE as JSON (e.g. specreason.threshold=5); repeatable")
    s.add_argument("--concurrency", type=int, default=1,
                   help="questions in flight at once (default 1: clean per-question timings)")
    s.add_argument("--max-wall", type=float, default=0.0,
                   help="start no new question after this many seconds; the table covers the questions finished "
                        "(default 0 = no limit)")
    s.add_argument("--timeout", type=float, default=600.0, help="deadline per strategy run in seconds (default 600)")
    s.add_argument("--out", default=None, help="write per-question records and the summary as JSON here")
    s.set_defaults(func=run_strategies)


# -- data -------------------------------------------------------------------------------------

def load_questions(path: str, limit: int) -> list[dict[str, str]]:
    from router.answers import gsm8k_gold

    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append({"question": r["question"], "gold": gsm8k_gold(r["answer"])})
            if len(rows) >= limit:
                break
    if not rows:
        raise SystemExit(f"no questions in {path}")
    return rows


def parse_options(pairs: list[str], valid: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        strategy, dot, knob = key.partition(".")
        if not sep or not dot or strategy not in valid:
            raise SystemExit(f"--option {item!r}: expected STRATEGY.KNOB=VALUE with STRATEGY one of {valid}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(strategy, {})[knob] = parsed
    return out


# -- workers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def started_workers(cfg, models: list[str], run_dir: Path, backend: str | None = None):
    """Start one worker per model with `thinkroute serve`'s launcher (no Ray, no Redis; a worker
    whose engine dies is restarted by its supervisor); yield {model: [address]}; stop them after."""
    from router.launcher import LocalCluster

    sub = cfg.model_copy(deep=True)
    sub.models = {m: sub.models[m] for m in models}
    for m in models:
        sub.models[m].replicas, sub.models[m].addresses = 1, []
        if backend:
            sub.models[m].backend = backend
    cluster = LocalCluster(sub, run_dir)
    try:
        cluster.start_workers(None)
        yield cluster.addresses()
    finally:
        cluster.stop()


# -- running ----------------------------------------------------------------------------------

@dataclass
class Arm:
    """One column of the comparison: a strategy with its role -> model map and knobs."""

    label: str
    strategy: str
    models: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)


async def run_one(pool, arm: Arm, question: dict[str, str], max_tokens: int, timeout: float) -> dict[str, Any]:
    from router.answers import extract_final_answer
    from router.errors import RoutingError
    from router.strategies import get_strategy
    from router.strategies.base import Context
    from router.trace import Trace
    from router.types import RouteQuery

    cls = get_strategy(arm.strategy)
    strategy = cls(cls.parse_options(arm.options))
    trace = Trace()
    ctx = Context(pool, arm.models, trace, time.monotonic() + timeout)
    query = RouteQuery(query=question["question"], strategy=arm.strategy, max_tokens=max_tokens)
    start = time.perf_counter()
    error = ""
    text = ""
    try:
        await strategy.check_plan({role: await pool.info(m) for role, m in arm.models.items()})
        text = (await strategy.run(query, ctx)).text
    except RoutingError as e:
        error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - start
    answer = extract_final_answer(text)
    tokens = {u["model"]: u["generated_tokens"] for u in trace.usage()}
    details = trace.details
    return {
        "arm": arm.label, "question": question["question"], "gold": question["gold"], "answer": answer,
        "correct": bool(answer) and answer == question["gold"], "wall_s": wall, "tokens": tokens,
        "prompt_tokens": {u["model"]: u["prompt_tokens"] for u in trace.usage()},
        "acceptance_rate": details.get("specreason", {}).get("acceptance_rate"),
        "takeovers": details.get("specthink", {}).get("takeover_count"),
        "error": error, "text": text, "details": details,
    }


def summarize(records: list[dict[str, Any]], arms: list[Arm], large: str) -> list[dict[str, Any]]:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.fmean(xs) if xs else None

    rows = []
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm.label]
        ok = [r for r in rs if not r["error"]]  # costs over completed runs; a failed run counts as wrong
        models = sorted({m for r in rs for m in r["tokens"]} | set(arm.models.values()))
        rows.append({
            "arm": arm.label, "n": len(rs), "accuracy": mean([float(r["correct"]) for r in rs]),
            "tokens": {m: mean([r["tokens"].get(m, 0) for r in ok]) for m in models},
            "wall_s": mean([r["wall_s"] for r in ok]), "acceptance_rate": mean([r["acceptance_rate"] for r in ok]),
            "takeovers": mean([r["takeovers"] for r in ok]), "errors": len(rs) - len(ok),
        })
    ref = next((r for r in rows if r["arm"] == REFERENCE), None)
    for r in rows:
        if ref and ref["wall_s"] and r["wall_s"] is not None:
            r["wall_ratio"] = r["wall_s"] / ref["wall_s"]
        ref_large = ref["tokens"].get(large) if ref else None
        mine = r["tokens"].get(large)
        r["large_token_ratio"] = (mine / ref_large) if ref_large and mine is not None else None
    return rows


def format_table(rows: list[dict[str, Any]], small: str, large: str) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    head = ["strategy", "n", "accuracy", f"tokens {small}", f"tokens {large}", "wall s", "accept rate",
            "takeovers", "wall / large", "large tok / large", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["arm"], str(r["n"]), f(r["accuracy"], ".3f"), f(r["tokens"].get(small), ".1f"),
            f(r["tokens"].get(large), ".1f"), f(r["wall_s"], ".2f"), f(r["acceptance_rate"], ".2f"),
            f(r["takeovers"], ".2f"), f(r.get("wall_ratio"), ".2f"), f(r["large_token_ratio"], ".2f"),
            str(r["errors"]),
        ]) + " |")
    return "\n".join(lines)


async def bench(addresses: dict[str, list[str]], arms: list[Arm], questions: list[dict[str, str]], max_tokens: int,
                timeout: float, concurrency: int, small: str, large: str,
                max_wall: float = 0.0) -> tuple[list[dict], list[dict]]:
    from tqdm import tqdm

    from router.pool import WorkerPool

    pool = WorkerPool(addresses)
    bar = tqdm(total=len(questions) * len(arms), desc="bench strategies", unit="run", file=sys.stderr)
    records: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(max(1, concurrency))

    stop_at = time.monotonic() + max_wall if max_wall > 0 else float("inf")

    async def question_runs(q: dict[str, str]) -> None:
        async with sem:
            if time.monotonic() > stop_at:
                return
            done = []
            for arm in arms:  # one question's arms back to back: the same load for each
                done.append(await run_one(pool, arm, q, max_tokens, timeout))
                bar.update(1)
            records.extend(done)  # only whole questions enter the table

    try:
        await asyncio.gather(*(question_runs(q) for q in questions))
    finally:
        bar.close()
        await pool.close()
    return records, summarize(records, arms, large)


def run_strategies(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.strategies import strategy_names

    cfg = load_config(args.config)
    small, large = cfg.router.roles["small"], cfg.router.roles["large"]
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in strategy_names() or s == "direct"]
    if unknown:
        raise SystemExit(f"--strategies: unknown pair strategies {unknown}; available are "
                         f"{[s for s in strategy_names() if s != 'direct']}")
    options = parse_options(args.option, strategy_names())
    arms = [Arm(REFERENCE, "direct", {"model": large}, options.get("direct", {})),
            Arm("direct-small", "direct", {"model": small}, options.get("direct", {}))]
    arms += [Arm(n, n, {"small": small, "large": large}, {**cfg.router.strategies.get(n, {}), **options.get(n, {})})
             for n in names]
    questions = load_questions(args.data, args.limit)
    max_tokens = args.max_tokens or cfg.router.max_tokens

    with contextlib.ExitStack() as stack:
        if args.workers:
            addresses: dict[str, list[str]] = {}
            for item in args.workers:
                name, sep, addr = item.partition("=")
                if not sep:
                    raise SystemExit(f"--workers {item!r}: expected NAME=HOST:PORT")
                addresses.setdefault(name, []).append(addr)
        elif all(cfg.models[m].addresses for m in (small, large)):
            addresses = {m: list(cfg.models[m].addresses) for m in (small, large)}
        else:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="thinkroute-bench-")))
            addresses = stack.enter_context(started_workers(cfg, [small, large], run_dir, args.backend))
        missing = [m for m in (small, large) if m not in addresses]
        if missing:
            raise SystemExit(f"no worker address for {missing}; give --workers {missing[0]}=HOST:PORT")
        start = time.perf_counter()
        records, rows = asyncio.run(bench(addresses, arms, questions, max_tokens, args.timeout, args.concurrency,
                                          small, large, args.max_wall))
        total = time.perf_counter() - start
    finished = len(records) // len(arms)
    print(f"\n{finished} of {len(questions)} questions from {args.data}, max_tokens {max_tokens}, concurrency {args.concurrency}, "
          f"small {small}, large {large}, {total:.0f} s in all\n")
    print(format_table(rows, small, large))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": " ".join(["thinkroute", *sys.argv[1:]]), "max_tokens": max_tokens,
            "small": small, "large": large, "summary": rows, "records": records,
        }, indent=1))
        print(f"\nwrote {args.out}")
    return 0 if not any(r["errors"] for r in rows) else 1


__all__ = ["register", "run_strategies", "summarize", "format_table", "Arm"]
