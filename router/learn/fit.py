"""Fit the served policy and estimate, by cross-validation on the same rows, how well it routes.

`train_artifact` writes one directory that `policy.artifact` serves:
    probe/ + policy.json   the `Policy.save` artifact (probe arrays, feature spec, model id, plans, prices)
    train.json             model id, feature spec, plans, prices, the outcome files (sha256), and the
                           cross-validated metrics: area, APGR and cost to reach the best plan's accuracy
                           of the probe and of route-eval's baselines, computed by route-eval's own code
                           (router/policy/evaluate.py: operating points fixed on training rows, the
                           method's curve = the hull of those points)
    calibration.png        out-of-fold predicted vs observed P(correct), per plan (with calibration.json)

train.json also lists `operating_points`: the dials that reach route-eval's log-cost quantiles on the training
rows (in-sample, as route-eval fixes them on a fold's training rows), for serving at a known cost.

Bandit rows (`thinkroute train --from-log`: each row judged for the plan that answered only): each plan's heads
are fitted on the rows where it was judged (probes/probe.py); calibration is computed on the judged (row, plan)
pairs out of fold; route-eval's metrics and the operating points need every plan's outcome on a row, so they are
computed on the complete rows only (from collected outcome files), or skipped, saying so, when fewer than
2 x cv rows are complete. No off-policy correction: the judged rows are the ones an earlier policy chose, and
they are weighted as they come (see docs/routing.md).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from probes.probe import FeatureSelect, ProbeConfig
from router.learn.outcomes import TrainingSet
from router.policy.evaluate import RoutingEvalConfig, evaluate, make_folds
from router.policy.policy import Policy, PolicyConfig

#: route-eval metrics copied into train.json per method.
METRIC_KEYS = ("area", "apgr", "cost_rel_to_match_best", "acc_at_best_cost", "cost95_rel")


def eval_config(ts: TrainingSet, name: str, probe: dict, select: dict, cv: int, seed: int, minilm: bool) -> RoutingEvalConfig:
    return RoutingEvalConfig(name=name, data="(train)", systems=ts.prices, probe=probe, select=select,
                             policy={"task_context_dim": 0}, cv=cv, seed=seed,
                             baseline_features={"minilm": {"source": "minilm", "max_tokens": 256}} if minilm else {},
                             knn={"features": "minilm", "k": 32} if minilm else {})


def cross_validate(ts: TrainingSet, X: np.ndarray, spec: dict, model_id: str, cfg: RoutingEvalConfig,
                   extra: dict[str, tuple[np.ndarray, dict, str]] | None = None, progress: bool = True, bootstrap: int = 200) -> dict:
    """route-eval's evaluation of the probe (and its baselines) on K folds of the training rows."""
    folds = make_folds(len(ts.data.texts), cfg.cv, None, cfg.seed)
    feats, specs = {"probe": X}, {"probe": (spec, model_id)}
    for k, (x, s, mid) in (extra or {}).items():
        feats[k], specs[k] = x, (s, mid)
    res = evaluate(cfg, ts.data, feats, specs, folds, progress, None, bootstrap)
    return res


def summarize(res: dict) -> dict:
    out = {"folds": res["folds"], "n": res["n"], "singles": res["singles"], "methods": {}}
    for name, m in res["methods"].items():
        out["methods"][name] = {**{k: m["mean"].get(k) for k in METRIC_KEYS}, "area_ci95": m["area_ci95"],
                                "points": m["points"]}
    if "comparisons" in res:
        out["strongest_baseline"] = res["strongest_baseline"]
        out["probe_vs_baselines"] = {b: {"mean_diff": c["mean_diff"], "ci95": c["ci95"], "verdict": c["verdict"]}
                                     for b, c in res["comparisons"].get("probe", {}).items()}
    return out


def out_of_fold_p(ts: TrainingSet, X: np.ndarray, spec: dict, model_id: str, select: FeatureSelect, probe: ProbeConfig,
                  cv: int, seed: int) -> np.ndarray:
    """Out-of-fold predicted P(correct) [n, plans] of the probe policy (same folds as the metrics)."""
    d = ts.data
    P = np.zeros_like(d.correct)
    for train, test in make_folds(len(d.texts), cv, None, seed):
        pol = Policy.fit(X[train], d.correct[train], d.out_tokens[train], None, ts.plans, ts.prices, spec, model_id,
                         select, probe, PolicyConfig(task_context_dim=0))
        P[test] = pol.predict_arrays(X[test], d.prompt_tokens[test])[0]
    return P


def calibration(P: np.ndarray, correct: np.ndarray, plans: list[str], bins: int = 10) -> dict:
    """Per plan and pooled: reliability bins (mean predicted, observed, count), Brier score, ECE."""
    edges = np.linspace(0, 1, bins + 1)

    def one(p, y):
        seen = ~np.isnan(y)  # bandit rows: only the judged (row, plan) pairs
        p, y = p[seen], y[seen]
        if not len(y):
            return {"bins": [], "brier": float("nan"), "ece": float("nan"), "base_rate": float("nan")}
        idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        rows = [{"predicted": float(p[idx == b].mean()), "observed": float(y[idx == b].mean()), "n": int((idx == b).sum())}
                for b in range(bins) if (idx == b).any()]
        ece = sum(r["n"] * abs(r["predicted"] - r["observed"]) for r in rows) / max(1, len(p))
        return {"bins": rows, "brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "base_rate": float(y.mean())}

    out = {plan: one(P[:, j], correct[:, j]) for j, plan in enumerate(plans)}
    out["all plans"] = one(P.ravel(), correct.ravel())
    return out


def plot_calibration(cal: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1, label="perfect")
    for name, c in cal.items():
        xs = [b["predicted"] for b in c["bins"]]
        ys = [b["observed"] for b in c["bins"]]
        style = dict(color="black", lw=2) if name == "all plans" else dict(lw=1)
        ax.plot(xs, ys, "o-", ms=3, label=f"{name} (ECE {c['ece']:.3f})", **style)
    ax.set_xlabel("predicted P(correct) (out of fold)")
    ax.set_ylabel("observed accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_artifact(ts: TrainingSet, X: np.ndarray, spec: dict, model_id: str, out: str | Path, *, select: dict | None = None,
                   probe: dict | None = None, cv: int = 5, seed: int = 0, minilm: bool = False,
                   extra: dict | None = None, progress: bool = True, meta: dict | None = None,
                   bootstrap: int = 200, plot: bool = True) -> dict:
    """Fit on every row, cross-validate, write the artifact directory; returns train.json's content."""
    from threadpoolctl import threadpool_limits

    t0 = time.time()
    out = Path(out)
    sel = FeatureSelect(**(select or {}))
    pcfg = ProbeConfig(**{"pca_dim": 64, **(probe or {})})
    d = ts.data
    if len(d.texts) < 2 * cv:
        raise ValueError(f"{len(d.texts)} rows are too few for {cv}-fold cross-validation; collect more or lower --cv")
    with threadpool_limits(1, user_api="blas"):
        policy = Policy.fit(X, d.correct, d.out_tokens, None, ts.plans, ts.prices, spec, model_id, sel, pcfg,
                            PolicyConfig(task_context_dim=0, seed=seed))
        P = out_of_fold_p(ts, X, spec, model_id, sel, pcfg, cv, seed)
    ecfg = eval_config(ts, str(meta.get("name", "train") if meta else "train"), asdict(pcfg), asdict(sel), cv, seed, minilm)
    full = ts.complete
    bandit = len(full) < len(d.texts)
    cv_info: dict
    points: list[dict] = []
    if bandit and len(full) < 2 * cv:
        cv_info = {"k": cv, "seed": seed, "skipped": f"{len(full)} of {len(d.texts)} rows have an outcome for every plan; "
                   f"route-eval's metrics need at least {2 * cv} such rows (add a collected outcome file)"}
    else:
        tsc = replace(ts, data=d.subset(full)) if bandit else ts
        xtra = {k: (x[full], s_, m) for k, (x, s_, m) in extra.items()} if (bandit and extra) else extra
        res = cross_validate(tsc, X[full] if bandit else X, spec, model_id, ecfg, xtra, progress, bootstrap)
        cv_info = {"k": cv, "seed": seed, "rule": "route-eval (router/policy/evaluate.py): dials fixed on training rows "
                   "at log-cost quantiles, curve = hull of those points", **summarize(res)}
        if bandit:
            cv_info["rows"] = f"the {len(full)} complete rows only (every plan judged)"
        with threadpool_limits(1, user_api="blas"):
            points = operating_points(policy, tsc, X[full] if bandit else X)
    cal = calibration(P, d.correct, ts.plans)
    out.mkdir(parents=True, exist_ok=True)
    policy.save(out)
    info = {
        "format": "thinkroute-train/1",
        "model_id": model_id,
        "feature_spec": spec,
        "select": asdict(sel),
        "probe_config": asdict(pcfg),
        "plans": ts.plans,
        "plan_models": ts.plan_models,
        "prices": {p: asdict(v) for p, v in ts.prices.items()},
        "outcomes": ts.files,
        "rows": len(d.texts),
        "duplicates_skipped": ts.duplicates,
        "accuracy": {p: float(np.nanmean(d.correct[:, j])) for j, p in enumerate(ts.plans)},
        "judged": {p: int(ts.judged[:, j].sum()) for j, p in enumerate(ts.plans)},
        "complete_rows": int(len(full)),
        "bandit": (f"{len(d.texts) - len(full)} rows judge a subset of the plans (decision-log feedback): each plan's "
                   "heads are fitted on the rows where it was judged; no off-policy correction") if bandit else None,
        "cv": cv_info,
        "calibration": {k: {kk: v[kk] for kk in ("brier", "ece", "base_rate")} for k, v in cal.items()},
        "operating_points": points,
        "seconds": round(time.time() - t0, 1),
        **(meta or {}),
    }
    (out / "train.json").write_text(json.dumps(info, indent=1, default=float))
    (out / "calibration.json").write_text(json.dumps(cal, indent=1))
    if plot:
        plot_calibration(cal, out / "calibration.png", f"{model_id}: {len(d.texts)} rows, {cv}-fold out-of-fold")
    return info


def operating_points(policy: Policy, ts: TrainingSet, X: np.ndarray) -> list[dict]:
    """route-eval's operating points on all training rows: per log-cost quantile between the cheapest plan and
    the most accurate one, the smallest dial whose training cost reaches it (router/policy/evaluate.py)."""
    from router.policy.dial import lam
    from router.policy.evaluate import QUANTILES, choose_dials
    from router.policy.policy import choose_index

    d = ts.data
    P, C = policy.predict_arrays(X, d.prompt_tokens)[:2]
    c = d.cost.mean(0)
    cheap, best = int(c.argmin()), int(d.correct.mean(0).argmax())
    lo, hi = float(c[cheap]), float(max(c[best], c[cheap]))
    targets = np.exp(np.log(lo) + np.asarray(QUANTILES) * (np.log(hi) - np.log(lo)))
    cfg = policy.config.dial
    dials = choose_dials(P, C, d.cost, targets, cfg.cost_scale, cfg)
    r = np.arange(len(P))
    out = []
    for q, dial in zip(QUANTILES, dials):
        idx = choose_index(P, C, lam(dial, cfg), cfg.cost_scale)
        out.append({"quantile": float(q), "dial": float(dial), "train_cost": float(d.cost[r, idx].mean()),
                    "train_acc": float(d.correct[r, idx].mean())})
    return out


def print_summary(info: dict, file=None) -> None:
    file = file or sys.stdout
    cv = info["cv"]
    if info.get("bandit"):
        print(f"bandit rows: {info['bandit']}; judged rows per plan {info['judged']}", file=file)
    if "skipped" in cv:
        print(f"trained on {info['rows']} rows, features {info['feature_spec'].get('source')} of {info['model_id']}; "
              f"no cross-validated routing metrics: {cv['skipped']}", file=file)
        for p, a in info["accuracy"].items():
            print(f"   {p:28s} accuracy {100 * a:5.1f}% on {info.get('judged', {}).get(p, info['rows'])} judged rows", file=file)
    else:
        print(f"trained on {info['rows']} rows, features {info['feature_spec'].get('source')} of {info['model_id']}; "
              f"{cv['k']}-fold cross-validated (route-eval's operating-point rule{', ' + cv['rows'] if 'rows' in cv else ''}):",
              file=file)
        for p, a in info["accuracy"].items():
            print(f"   {p:28s} accuracy {100 * a:5.1f}%  cost/query ${cv['singles'][p]['cost_per_query']:.6g}", file=file)
    allp = info["calibration"]["all plans"]
    if "skipped" in cv:
        print(f"   calibration (out of fold, judged pairs): Brier {allp['brier']:.4f}, ECE {allp['ece']:.4f}", file=file)
        return
    print(f"   {'method':28s} {'area':>7s} {'APGR':>7s} {'cost to match best':>19s}", file=file)
    for name, m in cv["methods"].items():
        c = m["cost_rel_to_match_best"]
        cs = "never" if c is None or not np.isfinite(c) else f"{100 * c:.1f}% of best"
        apgr = m["apgr"]
        print(f"   {name:28s} {m['area']:7.4f} {apgr if apgr is None else round(apgr, 4)!s:>7s} {cs:>19s}", file=file)
    allp = info["calibration"]["all plans"]
    print(f"   calibration (out of fold, all plans): Brier {allp['brier']:.4f}, ECE {allp['ece']:.4f}", file=file)
