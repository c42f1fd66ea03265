"""The dial made interpretable: a calibration table from outcome data, and targets resolved against it.

    outcomes (per query, per plan: correct, cost) + the policy's predictions (P, C per query and plan)
      -> for dial 0, 0.05, ..., 1: expected accuracy, cost per 1,000 requests, share of each plan
      -> `quality >= 0.95`: the cheapest point reaching 95 % of the best single plan's accuracy
         `budget <= $X per 1k requests`: the most accurate point costing at most $X per 1,000 requests

The table is what the served policy does on the calibration data (the same `choose_index` rule the router
applies per request), so a target picks a dial the operator can read off the table. It is stored as JSON
(`dial_calibration.json`, by `thinkroute dial calibrate`) beside the config or inside the artifact directory
(`policy.calibration`); the router loads it once and resolves targets per request (pure lookups, no I/O).

A calibration is an estimate on its data: the held-out check (`holdout_check`) measures how well a target holds
on queries the table was not built from, with a binomial interval.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import InvalidRoute
from router.policy.dial import DialConfig, lam
from router.policy.policy import choose_index

#: Dial values of a calibration table.
GRID = tuple(round(i / 20, 2) for i in range(21))
TABLE_FILE = "dial_calibration.json"


@dataclass
class OperatingPoint:
    dial: float
    accuracy: float
    cost_per_1k: float          # USD per 1,000 requests
    share: dict[str, float]     # fraction of requests per plan


@dataclass
class CalibrationTable:
    points: list[OperatingPoint]
    plans: list[str]
    best_plan: str              # the single plan with the highest accuracy on the calibration data
    best_accuracy: float
    best_cost_per_1k: float
    rows: int
    source: dict[str, Any] = field(default_factory=dict)  # outcome files, predictions (artifact/priors), command

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalibrationTable":
        pts = [OperatingPoint(float(p["dial"]), float(p["accuracy"]), float(p["cost_per_1k"]),
                              {str(k): float(v) for k, v in p["share"].items()}) for p in d["points"]]
        if not pts:
            raise ValueError("a calibration table needs at least one operating point")
        return cls(pts, list(d["plans"]), str(d["best_plan"]), float(d["best_accuracy"]), float(d["best_cost_per_1k"]),
                   int(d["rows"]), dict(d.get("source", {})))

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationTable":
        p = Path(path)
        if p.is_dir():
            p = p / TABLE_FILE
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidRoute(f"policy.calibration {path}: not a dial calibration table ({e}); make one with "
                               "`thinkroute dial calibrate --outcomes F --out DIR`") from e


def build_table(P: np.ndarray, C: np.ndarray, correct: np.ndarray, cost: np.ndarray, plans: list[str],
                dial_config: DialConfig = DialConfig(), grid=GRID, source: dict | None = None) -> CalibrationTable:
    """The table for predictions P/C [n, plans] (what the policy believes) and outcomes correct/cost [n, plans]
    (what happened): per dial, the policy's choice per query (`choose_index`, the router's rule) scored on the
    outcomes."""
    P, C, correct, cost = (np.asarray(a, np.float64) for a in (P, C, correct, cost))
    n = len(P)
    r = np.arange(n)
    points = []
    for d in grid:
        idx = choose_index(P, C, lam(d, dial_config), dial_config.cost_scale)
        share = {p: float((idx == j).mean()) for j, p in enumerate(plans)}
        points.append(OperatingPoint(float(d), float(correct[r, idx].mean()), float(1000 * cost[r, idx].mean()), share))
    acc = correct.mean(0)
    best = int(acc.argmax())
    return CalibrationTable(points, list(plans), plans[best], float(acc[best]), float(1000 * cost[:, best].mean()), n,
                            source or {})


# ---- targets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DialTarget:
    """What a request (or tenant) asks for instead of a raw dial: exactly one of the two."""

    quality: float | None = None      # fraction of the best plan's accuracy, in (0, 1]
    budget_per_1k: float | None = None  # USD per 1,000 requests, > 0

    def __post_init__(self):
        if (self.quality is None) == (self.budget_per_1k is None):
            raise InvalidRoute("a dial target is exactly one of quality (e.g. 0.95) and budget_per_1k (USD)")
        if self.quality is not None and not (0 < self.quality <= 1):  # NaN too
            raise InvalidRoute(f"quality target must be in (0, 1] (a fraction of the best plan's accuracy, e.g. 0.95); "
                               f"got {self.quality}")
        if self.budget_per_1k is not None and not (self.budget_per_1k > 0 and math.isfinite(self.budget_per_1k)):
            raise InvalidRoute(f"budget_per_1k must be a positive number of USD per 1,000 requests; got {self.budget_per_1k}")

    def __str__(self) -> str:
        return (f"quality >= {self.quality:g}" if self.quality is not None
                else f"budget <= ${self.budget_per_1k:g} per 1k requests")


_QUALITY = re.compile(r"^\s*quality\s*>=\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")
_BUDGET = re.compile(r"^\s*budget\s*<=\s*\$?\s*([0-9]*\.?[0-9]+)\s*(?:(?:usd\s*)?(?:/|per)\s*1k(?:\s*requests)?)?\s*$", re.I)


def parse_target(text: str) -> DialTarget:
    """`quality >= 0.95` (or `95%`) / `budget <= $2.5 per 1k requests` (also `budget <= 2.5`) -> DialTarget."""
    if not isinstance(text, str) or len(text) > 80:
        raise InvalidRoute("target must be a short string: `quality >= 0.95` or `budget <= $X per 1k requests`")
    m = _QUALITY.match(text)
    if m:
        q = float(m.group(1)) / (100 if m.group(2) else 1)
        return DialTarget(quality=q)
    m = _BUDGET.match(text)
    if m:
        return DialTarget(budget_per_1k=float(m.group(1)))
    raise InvalidRoute(f"target {text!r} is not understood: write `quality >= 0.95` (fraction of the best plan's "
                       "accuracy) or `budget <= $X per 1k requests`")


def resolve(table: CalibrationTable, target: DialTarget) -> tuple[OperatingPoint, str]:
    """The operating point for `target`, and why. quality: the cheapest point whose accuracy reaches
    quality x best_accuracy (ties: the lower dial), else the most accurate point (said so). budget: the most
    accurate point within the budget (ties: cheaper, then lower dial), else the cheapest point (said so)."""
    pts = table.points
    if target.quality is not None:
        need = target.quality * table.best_accuracy
        ok = [p for p in pts if p.accuracy >= need - 1e-12]
        if ok:
            p = min(ok, key=lambda p: (p.cost_per_1k, p.dial))
            return p, (f"{target}: dial {p.dial:g}, the cheapest calibrated point with accuracy {p.accuracy:.3f} >= "
                       f"{target.quality:g} x best plan {table.best_plan} {table.best_accuracy:.3f} "
                       f"(${p.cost_per_1k:.4g} per 1k requests)")
        p = max(pts, key=lambda p: (p.accuracy, -p.cost_per_1k))
        return p, (f"{target}: no calibrated point reaches {need:.3f}; dial {p.dial:g} is the most accurate "
                   f"({p.accuracy:.3f}, ${p.cost_per_1k:.4g} per 1k requests)")
    ok = [p for p in pts if p.cost_per_1k <= target.budget_per_1k + 1e-12]
    if ok:
        p = max(ok, key=lambda p: (p.accuracy, -p.cost_per_1k, -p.dial))
        return p, (f"{target}: dial {p.dial:g}, the most accurate calibrated point within budget (accuracy "
                   f"{p.accuracy:.3f}, ${p.cost_per_1k:.4g} per 1k requests)")
    p = min(pts, key=lambda p: (p.cost_per_1k, p.dial))
    return p, (f"{target}: every calibrated point costs more; dial {p.dial:g} is the cheapest "
               f"(${p.cost_per_1k:.4g} per 1k requests, accuracy {p.accuracy:.3f})")


# ---- uncertainty ----------------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


# ---- printing and plotting -------------------------------------------------------------------------
def format_table(table: CalibrationTable) -> str:
    short = {p: p[:12] for p in table.plans}
    head = f"{'dial':>5} {'accuracy':>8} {'$/1k req':>10}  " + " ".join(f"{short[p]:>12}" for p in table.plans)
    lines = [head]
    for pt in table.points:
        lines.append(f"{pt.dial:5.2f} {100 * pt.accuracy:7.1f}% {pt.cost_per_1k:10.4g}  "
                     + " ".join(f"{100 * pt.share[p]:11.0f}%" for p in table.plans))
    lines.append(f"best single plan: {table.best_plan} ({100 * table.best_accuracy:.1f}%, "
                 f"${table.best_cost_per_1k:.4g} per 1k requests); {table.rows} queries")
    return "\n".join(lines)


def plot_table(table: CalibrationTable, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [p.dial for p in table.points]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    a1.plot(d, [100 * p.accuracy for p in table.points], "o-", color="black", label="expected accuracy (%)")
    a1.axhline(100 * table.best_accuracy, ls=":", color="gray", label=f"best plan {table.best_plan}")
    a1.set_ylabel("accuracy (%)")
    b = a1.twinx()
    b.plot(d, [p.cost_per_1k for p in table.points], "s--", color="tab:red", ms=3, label="$ per 1k requests")
    b.set_yscale("log")
    b.set_ylabel("USD per 1,000 requests", color="tab:red")
    a1.legend(fontsize=7, loc="upper left")
    bottom = np.zeros(len(d))
    for p in table.plans:
        s = np.array([pt.share[p] for pt in table.points])
        a2.bar(d, s, width=0.045, bottom=bottom, label=p)
        bottom += s
    a2.set_xlabel("dial")
    a2.set_ylabel("share of requests")
    a2.legend(fontsize=6, ncol=2)
    a1.set_title(title or f"dial calibration on {table.rows} queries", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
