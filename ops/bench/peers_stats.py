"""Pure parts of the peers benchmark (ops/bench/peers.py): percentiles, per-system summaries, the
comparison against vLLM's own server, the three targets and the Markdown tables.

No I/O and no third-party imports, so the unit tests (tests/unit/test_bench_peers.py) run anywhere.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: The reference every added latency is measured against: vLLM's own OpenAI server.
BASELINE = "vllm-serve"
#: Router peers that sit in front of vLLM's server (their added latency is the target's bar).
PEERS = ("litellm", "routellm")
#: thinkroute's arms: (name, ingress, Ray Serve proxy mode). Each runs through thinkroute's own worker.
THINKROUTE = ("thinkroute-http", "thinkroute-grpc", "thinkroute-http-haproxy", "thinkroute-grpc-haproxy")
#: The arm the targets are judged on: the default deployment, like for like with the HTTP peers.
HEADLINE = "thinkroute-http"
#: thinkroute's worker, called directly over gRPC (no router): the engine the thinkroute arms use.
WORKER = "worker-grpc"


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    Raises ValueError on an empty sequence or q outside [0, 100]."""
    if not xs:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(ms: Sequence[float]) -> dict:
    """p50 / p95 / mean / n of latencies in milliseconds (empty -> n 0 and None figures)."""
    if not ms:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None}
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": statistics.fmean(ms)}


def paired_median_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Median of b[i] - a[i] over rounds where both succeeded (None marks a failed request)."""
    d = [y - x for x, y in zip(a, b) if x is not None and y is not None]
    return statistics.median(d) if d else None


def interleaved_order(systems: Sequence[str], round_index: int) -> list[str]:
    """The order the systems are called in one round: rotated by one each round so that no system is
    always first (or always right after a particular other one)."""
    if not systems:
        return []
    k = round_index % len(systems)
    return list(systems[k:]) + list(systems[:k])


def latency_rows(latency: Mapping[str, Mapping[int, Mapping]], sizes: Iterable[int]) -> list[dict]:
    """One row per system and size: p50/p95, added p50 over vLLM's server, paired median added.

    `latency[system][size]` holds `ms` (list, None for a failed request), `tokens` (list) and `errors`."""
    rows = []
    for size in sizes:
        base = latency.get(BASELINE, {}).get(size)
        base_ms = [x for x in base["ms"] if x is not None] if base else []
        base_p50 = percentile(base_ms, 50) if base_ms else None
        worker = latency.get(WORKER, {}).get(size)
        for system, by_size in latency.items():
            cell = by_size.get(size)
            if cell is None:
                continue
            ok = [x for x in cell["ms"] if x is not None]
            s = summarize(ok)
            row = {"system": system, "max_tokens": size, **s, "errors": cell.get("errors", 0),
                   "tokens_median": statistics.median(cell["tokens"]) if cell.get("tokens") else None}
            row["added_p50_ms"] = (s["p50_ms"] - base_p50) if (s["p50_ms"] is not None and base_p50 is not None) else None
            row["paired_added_ms"] = paired_median_diff(base["ms"], cell["ms"]) if base else None
            # thinkroute's arms also against their own engine (the worker called directly).
            row["over_worker_paired_ms"] = (paired_median_diff(worker["ms"], cell["ms"])
                                            if worker and system in THINKROUTE else None)
            rows.append(row)
    return rows


def throughput_summary(ms: Sequence[float], tokens: Sequence[int], wall_s: float, errors: int,
                       concurrency: int) -> dict:
    """Closed-loop figures: completed requests and generated tokens per second of wall time."""
    rps = len(ms) / wall_s if wall_s > 0 else 0.0
    tps = sum(tokens) / wall_s if wall_s > 0 else 0.0
    return {"concurrency": concurrency, "requests": len(ms), "errors": errors, "tokens": int(sum(tokens)),
            "wall_s": wall_s, "requests_per_s": rps, "tokens_per_s": tps, **summarize(ms)}


@dataclass(frozen=True)
class Target:
    name: str
    met: bool | None      # None: not measured (a system failed)
    detail: str


def combine(results: Sequence[bool | None]) -> bool | None:
    """All parts met -> True; any part not met -> False; otherwise (something unmeasured) None."""
    if any(r is False for r in results):
        return False
    if not results or any(r is None for r in results):
        return None
    return True


def _p50(rows: list[dict], system: str, size: int, key: str = "added_p50_ms") -> float | None:
    for r in rows:
        if r["system"] == system and r["max_tokens"] == size:
            return r[key]
    return None


def targets(rows: list[dict], throughput: Mapping[str, Mapping], engine: Mapping[str, Mapping],
            sizes: Sequence[int]) -> list[Target]:
    """The issue's three targets, each met / not met / not measured, with the figures behind it."""
    out = []
    # 1) thinkroute's added p50 below LiteLLM's and RouteLLM's, at every request size.
    parts, results = [], []
    for size in sizes:
        ours = _p50(rows, HEADLINE, size)
        peers = {p: _p50(rows, p, size) for p in PEERS}
        if ours is None or any(v is None for v in peers.values()):
            results.append(None)
            parts.append(f"{size} tok: not measured")
            continue
        results.append(all(ours < v for v in peers.values()))
        parts.append(f"{size} tok: {ours:+.1f} ms vs " + ", ".join(f"{p} {v:+.1f} ms" for p, v in peers.items()))
    met = combine(results)
    out.append(Target(f"added p50 over vLLM's server: {HEADLINE} below LiteLLM and RouteLLM", met, "; ".join(parts)))
    # 2) thinkroute's throughput at saturation >= the best peer (router peers and vLLM's server alone).
    ours = {s: throughput[s]["requests_per_s"] for s in THINKROUTE if s in throughput}
    peer_rps = {s: throughput[s]["requests_per_s"] for s in (BASELINE, *PEERS) if s in throughput}
    if ours and peer_rps:
        best_peer = max(peer_rps, key=peer_rps.get)
        head = ours.get(HEADLINE)
        detail = (f"{HEADLINE} {head:.2f} req/s" if head is not None else f"{HEADLINE} not measured")
        detail += f" vs best peer {best_peer} {peer_rps[best_peer]:.2f} req/s"
        best_ours = max(ours, key=ours.get)
        if best_ours != HEADLINE:
            detail += f" (best thinkroute arm: {best_ours} {ours[best_ours]:.2f} req/s)"
        out.append(Target("requests/s at saturation >= best peer", None if head is None else head >= peer_rps[best_peer],
                          detail))
    else:
        out.append(Target("requests/s at saturation >= best peer", None, "not measured"))
    # 3) our worker's tokens/s at concurrency 32 >= 95 % of vLLM's own server.
    w, v = engine.get(WORKER), engine.get(BASELINE)
    if w and v and v.get("tokens_per_s"):
        ratio = w["tokens_per_s"] / v["tokens_per_s"]
        out.append(Target(f"worker tokens/s at concurrency {w.get('concurrency', 32)} >= 95 % of vLLM's server",
                          ratio >= 0.95, f"{w['tokens_per_s']:.1f} vs {v['tokens_per_s']:.1f} tok/s = {ratio:.1%}"))
    else:
        out.append(Target("worker tokens/s >= 95 % of vLLM's server", None, "not measured"))
    return out


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(report: Mapping) -> str:
    """The results as Markdown tables (latency, throughput, engine, memory, targets)."""
    lines = ["| system | max_tokens | p50 ms | p95 ms | added p50 vs vLLM server | paired added | over own worker (paired) | tokens | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.get("latency_rows", []):
        lines.append(f"| {r['system']} | {r['max_tokens']} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | "
                     f"{_f(r['added_p50_ms'], '{:+.1f}')} | {_f(r['paired_added_ms'], '{:+.1f}')} | "
                     f"{_f(r['over_worker_paired_ms'], '{:+.1f}')} | {_f(r['tokens_median'], '{:.0f}')} | {r['errors']} |")
    lines += ["", "| system | concurrency | max_tokens | requests | req/s | tokens/s | p50 ms | p95 ms | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system, t in report.get("throughput", {}).items():
        lines.append(f"| {system} | {t['concurrency']} | {t.get('max_tokens', '')} | {t['requests']} | "
                     f"{t['requests_per_s']:.2f} | {t['tokens_per_s']:.1f} | {_f(t['p50_ms'])} | {_f(t['p95_ms'])} | "
                     f"{t['errors']} |")
    if report.get("engine"):
        lines += ["", "| engine front | concurrency | max_tokens | requests | generated tok/s | TTFT p50 ms | TTFT p95 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for system, e in report["engine"].items():
            lines.append(f"| {system} | {e['concurrency']} | {e['max_tokens']} | {e['requests']} | "
                         f"{e['tokens_per_s']:.1f} | {_f(e['ttft_p50_ms'])} | {_f(e['ttft_p95_ms'])} | {e['errors']} |")
    if report.get("memory"):
        lines += ["", "| system | processes | RSS MiB | PSS MiB | what |", "|---|---:|---:|---:|---|"]
        for system, m in report["memory"].items():
            lines.append(f"| {system} | {m['processes']} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} | {m.get('what', '')} |")
    if report.get("targets"):
        lines += ["", "| target | result | figures |", "|---|---|---|"]
        for t in report["targets"]:
            res = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['name']} | {res} | {t['detail']} |")
    return "\n".join(lines)
