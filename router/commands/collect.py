"""`thinkroute collect`: outcomes of every candidate plan on a labelled data file, through the running router."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

HELP = """Run every candidate plan of a config (`policy.candidates`: each `direct` model and each pair strategy
with its knobs) on a labelled data file through the running router (`thinkroute serve --config C`), each
request with its plan fixed; grade each answer; write an outcome file that `route-eval` and `train` read.

The data file is JSON lines: the query text (`question` | `prompt` | `query`), the gold answer (`answer` |
`ground_truth` | `gold` | `label`), optionally a task (`task` | `subject` | `dataset`) and a `grader`.
Graders: numeric (the answer's number vs the gold number: `#### 18`, `A: 18`, `answer is 18`, \\boxed{18},
else the last number), first_number (the first number: completions like `12 + 5 =`), choice (a
multiple-choice letter A-J), exact (normalised exact match).

Per query and plan the outcome row has is_correct, the extracted answer, the full answer (`solution`), tokens
per model, prompt tokens, cost (tokens x `policy.prices` of the config), the router's total latency and the
first model call's TTFT from the trace. Re-running with the same --out skips queries already complete (and
runs only the plans a query lacks); a failed request leaves its query for the next run. At the end: a table of
accuracy, cost and latency per plan.

Example (the six-system GSM8K replay deployment):
  thinkroute serve --config router/configs/replay_gsm8k_6sys.yaml &
  thinkroute collect --data ../shared/data/routing/gsm8k_6sys_outcomes.dev.jsonl --grader numeric \\
      --config router/configs/replay_gsm8k_6sys.yaml --out runs/collect/gsm8k_6sys.jsonl
  thinkroute route-eval --data runs/collect/gsm8k_6sys.jsonl --cv 5"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="run every candidate plan on labelled data through the router; write outcomes",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="FILE", help="labelled data (JSON lines)")
    p.add_argument("--config", required=True, metavar="YAML", help="the router config the stack runs (its policy.candidates and prices)")
    p.add_argument("--out", required=True, metavar="FILE", help="outcome file (JSON lines); an existing one is resumed")
    p.add_argument("--grader", choices=None, metavar="NAME", help="numeric | first_number | choice | exact (default: each row's `grader` field)")
    p.add_argument("--text-field", metavar="NAME", help="query text field (default: question | prompt | query)")
    p.add_argument("--gold-field", metavar="NAME", help="gold answer field (default: answer | ground_truth | gold | label)")
    p.add_argument("--task-field", metavar="NAME", help="task field (default: task | subject | dataset, if present)")
    p.add_argument("--plans", nargs="+", metavar="PLAN", help="only these candidate plans (default: all)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N queries")
    p.add_argument("--router", metavar="HOST:PORT", help="router gRPC address (default: the config's serve.host:grpc_port)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--timeout", type=float, default=None, help="deadline per request in seconds (default: the config's "
                   "router.request_timeout_s + 5)")
    p.add_argument("--max-tokens", type=int, default=0, help="max_tokens per request (default: the config's router.max_tokens)")
    p.add_argument("--api-key-env", default="THINKROUTE_API_KEY", help="environment variable holding the API key, if "
                   "the router requires one (default THINKROUTE_API_KEY; never pass keys on the command line)")
    p.add_argument("--budget-s", type=float, default=None, metavar="S", help="start no request after S seconds (the "
                   "queries left unfinished are done by the next run of the same command; default: no limit)")
    p.add_argument("--summary-json", metavar="FILE", help="also write the per-plan summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from router.collect.dataset import load_queries
    from router.collect.graders import GRADERS
    from router.collect.outcomes import OutcomeFile, format_summary, summarise
    from router.collect.runner import collect
    from router.config import load_config

    def fail(msg: str) -> int:
        print(f"thinkroute collect: error: {msg}", file=sys.stderr)
        return 2

    if args.grader is not None and args.grader not in GRADERS:
        return fail(f"invalid --grader {args.grader!r}: available graders are {sorted(GRADERS)}")
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        return fail("--concurrency and --limit must be >= 1")
    if args.budget_s is not None and args.budget_s <= 0:
        return fail(f"--budget-s must be > 0 seconds, got {args.budget_s}")
    config = load_config(args.config)
    if config.policy is None or not config.policy.candidates:
        return fail(f"config {args.config} has no policy.candidates: nothing to collect")
    plans = dict(config.policy.candidates)
    if args.plans:
        unknown = sorted(set(args.plans) - set(plans))
        if unknown:
            return fail(f"--plans {unknown} are not candidates of {args.config}: {sorted(plans)}")
        plans = {k: v for k, v in plans.items() if k in args.plans}
    try:
        queries, fields = load_queries(args.data, grader=args.grader, text_field=args.text_field,
                                       gold_field=args.gold_field, task_field=args.task_field, limit=args.limit)
    except ValueError as e:
        return fail(str(e))
    clash = sorted(set(plans) & {fields.text, "gold", "task", "grader"})
    if clash:
        return fail(f"candidate plan names {clash} collide with outcome row fields; rename them in the config")
    address = args.router or f"{config.serve.host}:{config.serve.grpc_port}"
    metadata = [("application", config.serve.app_name)]
    key = os.environ.get(args.api_key_env)
    if key:
        metadata.append(("authorization", f"Bearer {key}"))
    timeout = args.timeout or config.router.request_timeout_s + 5.0
    out = OutcomeFile(args.out, fields.text)
    bar = tqdm(total=0, desc="collect", unit="req", disable=args.no_progress)

    def set_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    try:
        stats = asyncio.run(collect(queries, plans, dict(config.policy.prices), out, address, metadata,
                                    concurrency=args.concurrency, timeout_s=timeout,
                                    max_tokens=args.max_tokens or config.router.max_tokens,
                                    on_done=bar.update, on_total=set_total, stop_after_s=args.budget_s))
    finally:
        bar.close()
        out.close()
    rows = [out.rows[q.text] for q in queries if q.text in out.rows]
    summary = summarise(rows, list(plans))
    print(f"{args.out}: {len(rows)} of {len(queries)} queries complete ({stats.skipped_queries} already done, "
          f"{stats.written_queries} written now; {stats.requests} requests, {stats.failed} failed)")
    print(format_summary(summary))
    if stats.failed:
        print(f"{stats.failed} requests failed (their queries are not written; re-run the same command to retry them); "
              f"first errors, router {address}:", file=sys.stderr)
    for plan, code, msg in stats.errors:
        print(f"  failed: plan {plan}: {code}: {msg}", file=sys.stderr)
    if stats.not_started:
        print(f"--budget-s {args.budget_s:g} passed: {stats.not_started} requests not started; re-run the same command "
              "to collect the rest", file=sys.stderr)
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps({"out": args.out, "queries": len(queries), "complete": len(rows),
                                                       "failed_requests": stats.failed, "plans": summary}, indent=1))
    return 0 if stats.failed == 0 and stats.not_started == 0 else 1
