"""The outcome file `thinkroute collect` writes, and its summary.

One JSON line per query, in the format `route-eval` (router/policy/evaluate.py) and `train` read:

    {"<text field>": "...", "task": "...", "gold": "...",
     "<plan>": {"is_correct": bool, "answer": "extracted answer", "solution": "the full answer text",
                "tokens": {model: generated tokens}, "prompt_tokens": n (summed over the plan's calls),
                "prompt_tokens_by_model": {model: n}, "thinking_tokens": n, "cost": USD (policy.prices),
                "latency_ms": router total (trace), "ttft_ms": first generate call's TTFT (trace),
                "client_latency_ms": as the collector saw it, "request_id": "..."}, ...}

A row is written (appended, flushed) once every plan of its query has an answer; a failed request leaves its
query unwritten, so a re-run does it again. Resume: rows already in the file are read back; queries whose
plans are all there are skipped, and a query that lacks some plans (a plan added to the config) gets only
those, its row rewritten when the file is compacted at the end (atomically: temp file, then rename).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from router.policy.costs import token_cost


def plan_cost(prices: dict[str, Any], usage: list[tuple[str, int, int]]) -> float:
    """USD of one answer: per model call usage (model, prompt tokens, generated tokens) at `policy.prices`
    (a number, or {in, out}); a model without a price costs 0."""
    return sum(token_cost(prices.get(model), prompt, generated) for model, prompt, generated in usage)


class OutcomeFile:
    """The outcome rows of one file, keyed by query text; appends completed rows, compacts at the end."""

    def __init__(self, path: str | Path, text_field: str) -> None:
        self.path, self.text_field = Path(path), text_field
        self.rows: dict[str, dict] = {}
        self.rewritten = False
        if self.path.exists():
            with self.path.open() as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        # NOTE: a line cut by a crash mid-write: its query is simply done again.
                        self.rewritten = True
                        continue
                    text = row.get(text_field)
                    if isinstance(text, str):
                        if text in self.rows:
                            self.rewritten = True
                        self.rows[text] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("a")

    def done_plans(self, text: str) -> set[str]:
        row = self.rows.get(text) or {}
        return {k for k, v in row.items() if isinstance(v, dict) and "is_correct" in v}

    def write(self, text: str, fields: dict[str, Any], results: dict[str, dict]) -> None:
        """Record a query whose every plan is answered (merged with what the file already had for it)."""
        existed = text in self.rows
        row = {**(self.rows.get(text) or {}), self.text_field: text, **fields, **results}
        self.rows[text] = row
        if existed:
            self.rewritten = True
        self._out.write(json.dumps(row) + "\n")
        self._out.flush()

    def close(self) -> None:
        """Flush; when a query was written twice (or a torn line was read), rewrite the file with one row each."""
        self._out.close()
        if not self.rewritten:
            return
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        with tmp.open("w") as f:
            for row in self.rows.values():
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.path)


def summarise(rows: list[dict], plans: list[str]) -> list[dict]:
    """Per plan over `rows`: queries, accuracy, mean and total cost, mean and p95 latency, mean TTFT."""
    out = []
    for plan in plans:
        recs = [r[plan] for r in rows if isinstance(r.get(plan), dict) and "is_correct" in r[plan]]
        lat = sorted(float(x.get("latency_ms", 0.0)) for x in recs)
        out.append({
            "plan": plan, "n": len(recs),
            "accuracy": sum(bool(x["is_correct"]) for x in recs) / len(recs) if recs else math.nan,
            "cost_per_query": sum(float(x.get("cost", 0.0)) for x in recs) / len(recs) if recs else math.nan,
            "cost_total": sum(float(x.get("cost", 0.0)) for x in recs),
            "latency_ms_mean": sum(lat) / len(lat) if lat else math.nan,
            "latency_ms_p95": lat[min(len(lat) - 1, int(math.ceil(0.95 * len(lat))) - 1)] if lat else math.nan,
            "ttft_ms_mean": sum(float(x.get("ttft_ms", 0.0)) for x in recs) / len(recs) if recs else math.nan,
        })
    return out


def format_summary(summary: list[dict]) -> str:
    head = f"{'plan':28s} {'n':>5s} {'accuracy':>9s} {'cost/query':>12s} {'cost total':>11s} {'latency':>9s} {'p95':>9s} {'TTFT':>8s}"
    lines = [head]
    for s in summary:
        if not s["n"]:
            lines.append(f"{s['plan']:28s} {0:5d}  (no answers yet)")
            continue
        lines.append(f"{s['plan']:28s} {s['n']:5d} {100 * s['accuracy']:8.1f}% ${s['cost_per_query']:11.6f} "
                     f"${s['cost_total']:10.4f} {s['latency_ms_mean']:7.0f}ms {s['latency_ms_p95']:7.0f}ms "
                     f"{s['ttft_ms_mean']:6.0f}ms")
    lines.append("latency: the router's total per request (trace); TTFT: the first model call's, at the worker; "
                 "cost: tokens x policy.prices")
    return "\n".join(lines)
