"""Reasoning-mode anchors for `thinkroute route-eval`: plans that differ only by thinking level.

Plans are named `<model>:<level>` (`claude-sonnet-4:no_think`, `claude-sonnet-4:budget4096`,
`gpt-5-mini:effort_high`, ...). Enabled by a routing config's `reasoning:` section; each anchor runs on
the same folds as every other method and is scored by the same code (router/policy/evaluate.py):

- `always-no-think`: thinking off, one point per model that can switch it off (the curve is their hull).
- `always-largest-level`: per model its most expensive level (largest budget / highest effort, by the
  training rows' mean output tokens), one point per model.
- `best-fixed-level`: per model the level most accurate on the training rows (ties: cheaper), one point
  per model.
- `three-tier[<model>]`: a ThinkRouter-style classifier (NO_THINK / SHORT / FULL) for one model: a
  multinomial logistic regression on text embeddings (`tier_features`) predicting the cheapest tier that
  answers correctly (rows no tier answers are labelled NO_THINK: thinking buys nothing there). A tier's
  score is P(the needed tier <= it); operating points are its argmax class and the dial rule on those
  scores vs the tier's predicted cost, with dials fixed on the training rows (scores there out-of-fold).

`targets` reads the per-fold results against the issue's two targets: reach the best single plan's
accuracy at <= a share of its cost, and beat it by a margin at <= its cost.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from router.policy.dial import lam
from router.policy.policy import PolicyConfig, choose_index

if TYPE_CHECKING:
    from router.policy.evaluate import FoldContext, FoldRun, MethodSpec, RoutingEvalConfig

NO_THINK = "no_think"


def split_plan(plan: str) -> tuple[str, str]:
    """`claude-sonnet-4:budget4096` -> ("claude-sonnet-4", "budget4096"); a name without `:` -> (name, "")."""
    model, sep, level = plan.rpartition(":")
    return (model, level) if sep else (plan, "")


def method_specs(cfg: "RoutingEvalConfig", feats: dict[str, np.ndarray]) -> list["MethodSpec"]:
    """The anchors for this config's plans (empty without a `reasoning:` section)."""
    from router.policy.evaluate import MethodSpec

    r = cfg.reasoning or {}
    if not r:
        return []
    out = [MethodSpec(f"{rule}", f"reasoning:{rule}") for rule in ("always-no-think", "always-largest-level", "best-fixed-level")]
    tf = r.get("tier_features", "minilm")
    for model, levels in (r.get("three_tier") or {}).items():
        if len(levels) != 3:
            raise ValueError(f"reasoning.three_tier.{model}: give three levels (no think, short, full), got {levels}")
        missing = [f"{model}:{lv}" for lv in levels if f"{model}:{lv}" not in cfg.systems]
        if missing:
            raise ValueError(f"reasoning.three_tier.{model}: plans {missing} are not in systems")
        if tf in feats:
            out.append(MethodSpec(f"three-tier[{model}]", "reasoning:three-tier", tf, policy={"model": model, "levels": list(levels)}))
    return out


def run(ctx: "FoldContext", m: "MethodSpec") -> "FoldRun":
    from router.policy.evaluate import FoldRun

    d = ctx.data
    rule = m.kind.split(":", 1)[1]
    if rule == "three-tier":
        return _three_tier(ctx, m)
    by_model: dict[str, list[int]] = {}
    for j, s in enumerate(d.systems):
        by_model.setdefault(split_plan(s)[0], []).append(j)
    tr_cost = d.cost[ctx.train].mean(0)
    tr_tok = d.out_tokens[ctx.train].mean(0)
    tr_acc = d.correct[ctx.train].mean(0)
    if rule == "always-no-think":
        plans = [j for j, s in enumerate(d.systems) if split_plan(s)[1] == NO_THINK]
    elif rule == "always-largest-level":
        plans = [max(js, key=lambda j: (tr_tok[j], tr_cost[j])) for js in by_model.values()]
    elif rule == "best-fixed-level":
        plans = [max(js, key=lambda j: (tr_acc[j], -tr_cost[j])) for js in by_model.values()]
    else:
        raise ValueError(f"unknown reasoning anchor {rule!r}")
    if not plans:
        raise ValueError(f"anchor {rule}: no plan of {d.systems} qualifies")
    n = len(ctx.test)
    return FoldRun([d.systems[j] for j in plans], [np.full(n, j) for j in plans], [None] * len(plans))


def tier_labels(correct: np.ndarray) -> np.ndarray:
    """Cheapest tier (column) that is correct; 0 (no think) when none is."""
    ok = correct > 0
    return np.where(ok.any(1), ok.argmax(1), 0)


def _tier_scores(clf, X: np.ndarray) -> np.ndarray:
    """[n, 3] P(needed tier <= t), from the classifier's class probabilities (absent classes: 0)."""
    q = np.zeros((len(X), 3))
    q[:, clf.classes_] = clf.predict_proba(X)
    return np.cumsum(q, 1)


def _three_tier(ctx: "FoldContext", m: "MethodSpec") -> "FoldRun":
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from router.policy.evaluate import FoldRun, QUANTILES, choose_dials

    d = ctx.data
    model, levels = m.policy["model"], m.policy["levels"]
    tiers = np.array([d.systems.index(f"{model}:{lv}") for lv in levels])
    X = ctx.feats[m.feature]
    y = tier_labels(d.correct[ctx.train][:, tiers])
    clf = LogisticRegression(C=1.0, max_iter=2000)
    if len(set(y.tolist())) < 2:  # one class on the training rows: always that tier
        n = len(ctx.test)
        return FoldRun(["only"], [np.full(n, tiers[int(y[0])])], [None])
    # training-row scores out of fold, so the dials are fixed on honest scores
    k = int(min(5, np.bincount(y).max(), max(2, np.bincount(y)[np.bincount(y) > 0].min())))
    try:
        proba = cross_val_predict(clf, X[ctx.train], y, cv=max(2, k), method="predict_proba")
        classes = np.unique(y)
        q = np.zeros((len(y), 3))
        q[:, classes] = proba
        P_tr = np.cumsum(q, 1)
    except ValueError:
        P_tr = None
    clf.fit(X[ctx.train], y)
    if P_tr is None:
        P_tr = _tier_scores(clf, X[ctx.train])
    tok = d.out_tokens[ctx.train][:, tiers].mean(0)
    prices = ctx.cfg.prices()

    def cost_pred(rows):
        pt = d.prompt_tokens[rows]
        return np.stack([prices[d.systems[j]].cost(pt, np.full(len(rows), tok[i])) for i, j in enumerate(tiers)], 1)

    dial_cfg = PolicyConfig(**ctx.cfg.policy).dial
    dials = choose_dials(P_tr, cost_pred(ctx.train), d.cost[ctx.train][:, tiers], ctx.targets(), dial_cfg.cost_scale, dial_cfg)
    P_te = _tier_scores(clf, X[ctx.test])
    C_te = cost_pred(ctx.test)
    decisions = [tiers[choose_index(P_te, C_te, lam(dl, dial_cfg), dial_cfg.cost_scale)] for dl in dials]
    labels = [f"q{q:.2f}" for q in QUANTILES]
    decisions.append(tiers[clf.predict(X[ctx.test]).astype(int)])  # ThinkRouter's own rule: the argmax tier
    labels.append("argmax")
    return FoldRun(labels, decisions, list(dials) + [None])


def targets(res: dict, share: float = 0.10, margin: float = 0.03) -> dict:
    """Per method and fold, the two targets against the fold's best single plan (most accurate on the
    training rows, scored on the evaluation rows): (a) its accuracy reached at <= `share` of its cost,
    (b) accuracy at <= its cost at least `margin` above it. Met = on every fold."""
    ref = res["references"]
    out = {"share": share, "margin": margin, "best_cost_per_fold": ref["c_hi"], "best_acc_per_fold": ref["a_hi"], "methods": {}}
    for name, m in res["methods"].items():
        rel = [f["cost_rel_to_match_best"] for f in m["folds"]]
        gain = [f["acc_at_best_cost"] - a for f, a in zip(m["folds"], ref["a_hi"])]
        out["methods"][name] = {
            "cost_rel_to_match_best": rel,
            "cost_usd_to_match_best": [r * c if np.isfinite(r) else float("inf") for r, c in zip(rel, ref["c_hi"])],
            "gain_at_best_cost": gain,
            "match_at_share_folds": f"{sum(r <= share for r in rel)}/{len(rel)}",
            "margin_folds": f"{sum(g >= margin for g in gain)}/{len(gain)}",
            "match_at_share_met": bool(all(r <= share for r in rel)),
            "margin_met": bool(all(g >= margin for g in gain)),
        }
    return out


def print_targets(t: dict, out) -> None:
    print(f"   targets per fold: best plan's accuracy at <= {100 * t['share']:.0f}% of its cost; >= +{100 * t['margin']:.0f} points at <= its cost", file=out)
    for name, v in t["methods"].items():
        rel = " ".join("never" if not np.isfinite(r) else f"{100 * r:.1f}%" for r in v["cost_rel_to_match_best"])
        gain = " ".join(f"{100 * g:+.1f}" for g in v["gain_at_best_cost"])
        print(f"   {name:34s} cost to match: {rel:40s} [{v['match_at_share_folds']} {'met' if v['match_at_share_met'] else 'not met'}]"
              f"  gain pts: {gain} [{v['margin_folds']} {'met' if v['margin_met'] else 'not met'}]", file=out)
