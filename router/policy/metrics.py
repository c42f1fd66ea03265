"""Accuracy-vs-cost metrics for routers, from a set of operating points (mean cost, accuracy).

Every method is reduced to its *attainable curve* acc(c): the upper concave hull, with free
disposal, of its operating points (a router can randomise between two operating points, which
mixes cost and accuracy linearly, and can always spend more). Below a method's cheapest point
acc(c) is undefined and counted as 0 (the evaluation adds the always-cheapest point to every
router, since dial 0 is "always cheapest").

- `area`: mean of acc(c) over log-uniform c in [c_lo, c_hi] (c_lo = always-cheapest's cost,
  c_hi = the most accurate single system's cost), i.e. the area under acc vs log(cost) divided by
  log(c_hi / c_lo). In accuracy units: 1.0 = perfect at every budget.
- `apgr`: mean over linear-uniform c in [c_lo, c_hi] of (acc(c) - a_lo) / (a_hi - a_lo): the share
  of the cheapest -> best gap recovered, averaged over the cost range (random mixing scores 0.5).
- `cost_to_reach(q)`: the least c with acc(c) >= q * a_best.
- `routellm_apgr` / `cpt(q)`: RouteLLM's versions for two systems, over the share of calls to the
  strong model instead of cost (CPT(50%) = the strong-call share needed to recover 50 % of the gap).
"""
from __future__ import annotations

import numpy as np

GRID = 512


def hull(points) -> np.ndarray:
    """Upper concave hull with free disposal of (x, y) points: vertices sorted by x, y increasing."""
    pts = np.asarray(sorted({(float(x), float(y)) for x, y in points}), np.float64)
    if len(pts) == 0:
        raise ValueError("no operating points")
    # Pareto front: keep points whose y beats every cheaper point
    front = []
    for x, y in pts:
        if not front or y > front[-1][1] + 1e-15:
            if front and abs(front[-1][0] - x) < 1e-18:
                front[-1] = (x, y)
            else:
                front.append((x, y))
    out: list[tuple[float, float]] = []
    for p in front:  # monotone chain, upper hull (concave)
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # out[-1] under the chord
                out.pop()
            else:
                break
        out.append(p)
    return np.asarray(out)


def curve_at(h: np.ndarray, x) -> np.ndarray:
    """acc(x) on a hull: linear between vertices, flat after the last, 0 before the first."""
    x = np.asarray(x, np.float64)
    y = np.interp(x, h[:, 0], h[:, 1])
    return np.where(x < h[0, 0] * (1 - 1e-9), 0.0, y)


def area(points, c_lo: float, c_hi: float) -> float:
    """Normalised area under acc vs log(cost) on [c_lo, c_hi] (= mean accuracy over log-uniform budgets)."""
    h = hull(points)
    if c_hi <= c_lo:
        return float(curve_at(h, c_lo))
    xs = np.exp(np.linspace(np.log(c_lo), np.log(c_hi), GRID))
    return float(np.trapezoid(curve_at(h, xs), np.log(xs)) / np.log(c_hi / c_lo))


def apgr(points, c_lo: float, a_lo: float, c_hi: float, a_hi: float) -> float:
    """Average performance-gap recovered over linear-uniform budgets in [c_lo, c_hi]."""
    h = hull(points)
    if a_hi == a_lo or c_hi <= c_lo:
        return float("nan")
    xs = np.linspace(c_lo, c_hi, GRID)
    return float(np.trapezoid((curve_at(h, xs) - a_lo) / (a_hi - a_lo), xs) / (c_hi - c_lo))


def cost_to_reach(points, target_acc: float) -> float:
    """Least budget whose attainable accuracy reaches target_acc (inf when never)."""
    h = hull(points)
    if h[-1, 1] < target_acc - 1e-12:
        return float("inf")
    i = int(np.argmax(h[:, 1] >= target_acc - 1e-12))
    if i == 0:
        return float(h[0, 0])
    (x1, y1), (x2, y2) = h[i - 1], h[i]
    return float(x1 + (target_acc - y1) * (x2 - x1) / (y2 - y1))


def routellm_apgr(share_points, a_weak: float, a_strong: float) -> float:
    """RouteLLM APGR: mean PGR over strong-call share in [0, 1]; share_points = (share, acc)."""
    pts = list(share_points) + [(0.0, a_weak)]
    return apgr(pts, 0.0, a_weak, 1.0, a_strong)


def cpt(share_points, a_weak: float, a_strong: float, q: float) -> float:
    """RouteLLM CPT(q): least strong-call share whose PGR reaches q."""
    pts = list(share_points) + [(0.0, a_weak)]
    return cost_to_reach(pts, a_weak + q * (a_strong - a_weak))


def area_batch(xs, ys, c_lo, c_hi, grid: int = GRID) -> np.ndarray:
    """`area` for B point sets at once (bootstrap replicates): xs, ys [B, P]; c_lo, c_hi [B].

    The attainable accuracy at budget c is the best single point with cost <= c, or the best mix of two
    points i, j with x_i <= c <= x_j (the upper concave hull with free disposal, as `hull`); 0 below the
    cheapest point."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    c_lo, c_hi = np.asarray(c_lo, np.float64), np.asarray(c_hi, np.float64)
    t = np.linspace(0.0, 1.0, grid)
    lg = np.log(c_lo)[:, None] + t[None, :] * np.log(c_hi / c_lo)[:, None]  # [B, G]
    c = np.exp(lg)
    X, Y = xs[:, :, None], ys[:, :, None]  # [B, P, 1]
    C = c[:, None, :]  # [B, 1, G]
    tol = 1 + 1e-9
    val = np.max(np.where(X <= C * tol, Y, 0.0), axis=1)  # single points
    P = xs.shape[1]
    for i in range(P):
        for j in range(i + 1, P):  # each unordered pair once: from its cheaper point to its dearer one
            a, b = xs[:, i, None], xs[:, j, None]
            swap = a > b
            x0, x1 = np.where(swap, b, a), np.where(swap, a, b)
            y0 = np.where(swap, ys[:, j, None], ys[:, i, None])
            y1 = np.where(swap, ys[:, i, None], ys[:, j, None])
            ok = (x0 < x1) & (x0 <= c * tol) & (c <= x1)
            mix = y0 + (y1 - y0) * (c - x0) / np.where(x1 > x0, x1 - x0, 1.0)
            val = np.where(ok, np.maximum(val, mix), val)
    width = np.log(c_hi / c_lo)
    out = np.trapezoid(val, lg, axis=1) / np.where(width > 0, width, 1.0)
    return np.where(width > 0, out, val[:, 0])
