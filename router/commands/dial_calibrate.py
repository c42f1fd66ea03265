"""`thinkroute dial calibrate`: what each dial value does, on outcome data, as a table and a plot.

    thinkroute dial calibrate --config C --outcomes F [--artifact DIR | --fit length|noise|local] --out DIR

Predictions come from (in order): `--fit FEATURES` (a probe fitted here: out-of-fold predictions on the
calibration rows, so the table is not built from predictions on the probe's own training rows), `--artifact DIR`
(a `thinkroute train` artifact; default `policy.artifact` of the config), or the config's `policy.priors`.
Outcomes (correct, cost from recorded tokens x `policy.prices`) come from the files, read as `thinkroute train`
reads them. Writes DIR/dial_calibration.json (serve it with `policy.calibration: DIR`) and DIR/dial_calibration.png.

`--holdout FRAC` keeps a random FRAC of the rows out of the table and checks on them, for each `--check` target,
that the resolved operating point reaches the target (quality: >= target x the best plan's held-out accuracy,
within the 95 % Wilson interval) and reports its cost share (its cost / the best plan's cost).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibrate (thinkroute dial calibrate)")
    g.add_argument("--outcomes", nargs="+", metavar="FILE", help="outcome files (JSON lines, route-eval / collect format)")
    g.add_argument("--config", metavar="YAML", help="router config: policy candidates, prices, priors (default: embedded)")
    g.add_argument("--artifact", metavar="DIR", help="policy artifact whose predictions to calibrate (default: policy.artifact)")
    g.add_argument("--fit", choices=["length", "noise", "local"],
                   help="fit a probe on these features here (out-of-fold predictions) instead of an artifact/priors")
    g.add_argument("--out", metavar="DIR", help="write dial_calibration.json and .png here")
    g.add_argument("--holdout", type=float, default=0.0, metavar="FRAC", help="rows kept out of the table and checked")
    g.add_argument("--check", action="append", default=[], metavar="TARGET",
                   help="target to check on the held-out rows, e.g. 'quality >= 0.95' or 'budget <= $2 per 1k requests'")
    g.add_argument("--cv", type=int, default=5, help="folds for --fit's out-of-fold predictions (default 5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the folds")
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--json", action="store_true", help="print the result as JSON")


def _prior_arrays(config, ts):
    """P, C [n, plans] of the configured priors (what the router predicts without an artifact)."""
    from router.learn.outcomes import plan_models
    from router.policy.costs import token_cost

    spec = config.policy
    models = plan_models(config)
    missing = [p for p in ts.plans if p not in spec.priors]
    if missing:
        raise SystemExit(f"dial calibrate: no artifact and no policy.priors for {missing}: pass --artifact or --fit")
    n = len(ts.data.texts)
    P = np.array([[spec.priors[p].p_correct for p in ts.plans]] * n)
    C = np.zeros((n, len(ts.plans)))
    for j, p in enumerate(ts.plans):
        for m in set(models[p]):
            C[:, j] += [token_cost(spec.prices.get(m), pt, spec.priors[p].tokens.get(m, 0.0)) for pt in ts.data.prompt_tokens]
    return P, C


def _features(kind: str, texts: list[str], config, seed: int):
    from router.commands.train import build_source

    ns = argparse.Namespace(features=kind, noise_dim=64, seed=seed, layers=[-1], pooling=["last"], max_tokens=256,
                            uncertainty=True, worker=None, no_cache=False)
    src = build_source(ns, config, progress=True)
    return src.features(texts), dict(src.spec), src.model_id


def predictions(args, config, ts, rows: np.ndarray):
    """(P, C, description) for the rows `rows` of `ts`."""
    from router.policy.policy import Policy

    d = ts.data.subset(rows)
    if args.fit:
        from probes.probe import FeatureSelect, ProbeConfig
        from router.learn.fit import out_of_fold_p

        X, spec, model_id = _features(args.fit, d.texts, config, args.seed)
        sub = type(ts)(d, ts.plans, ts.prices, ts.plan_models, ts.files, ts.duplicates)
        P = out_of_fold_p(sub, X, spec, model_id, FeatureSelect(), ProbeConfig(seed=args.seed), args.cv, args.seed)
        pol = Policy.fit(X, d.correct, d.out_tokens, None, ts.plans, ts.prices, spec, model_id)
        C = pol.predict_arrays(X, d.prompt_tokens)[1]
        return P, C, pol.config.dial, {"predictions": f"probe on {args.fit} features, {args.cv}-fold out of fold"}, pol
    artifact = args.artifact or (config.policy.artifact if config.policy else None)
    if artifact:
        from router.learn.serving import resolve_artifact
        from router.learn.textfeat import is_text_spec, source_for_spec

        pol = Policy.load(resolve_artifact(artifact))
        spec = pol.probe.feature_spec
        if is_text_spec(spec):
            X = source_for_spec(spec).features(d.texts)
        else:
            X, got, _ = _features("local", d.texts, config, args.seed)
            if {k: got.get(k) for k in spec} != spec:
                raise SystemExit(f"dial calibrate: the artifact's feature spec {spec} is not the local drafter's {got}")
        P, C = pol.predict_arrays(X, d.prompt_tokens)[:2]
        return P, C, pol.config.dial, {"predictions": f"artifact {artifact}"}, pol
    from router.policy.dial import DialConfig

    sub = type(ts)(d, ts.plans, ts.prices, ts.plan_models, ts.files, ts.duplicates)
    P, C = _prior_arrays(config, sub)
    return P, C, DialConfig(**config.policy.dial), {"predictions": "policy.priors (configured, not measured)"}, None


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.learn.outcomes import OutcomeError, load_training_set
    from router.policy.calibrate import (TABLE_FILE, build_table, format_table, parse_target, plot_table, resolve,
                                         wilson_interval)
    from router.policy.policy import choose_index
    from router.policy.dial import lam

    if not args.outcomes:
        print("dial calibrate: --outcomes FILE is required", file=sys.stderr)
        return 2
    config = load_config(args.config)
    try:
        ts = load_training_set(args.outcomes, config)
        targets = [parse_target(t) for t in args.check]
    except (OutcomeError, ValueError) as e:
        print(f"dial calibrate: {e}", file=sys.stderr)
        return 2
    n = len(ts.data.texts)
    order = np.random.default_rng(args.seed).permutation(n)
    n_out = int(round(args.holdout * n)) if 0 < args.holdout < 1 else 0
    held, calib = np.sort(order[:n_out]), np.sort(order[n_out:])
    P, C, dial_cfg, source, pol = predictions(args, config, ts, calib)
    d = ts.data.subset(calib)
    source.update({"outcomes": [f["path"] for f in ts.files], "rows": len(calib), "holdout": n_out, "seed": args.seed,
                   "command": "thinkroute " + " ".join(sys.argv[1:])})
    table = build_table(P, C, d.correct, d.cost, ts.plans, dial_cfg, source=source)
    result = {"table": json.loads(table.to_json()), "checks": []}
    if not args.json:
        print(format_table(table))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / TABLE_FILE).write_text(table.to_json())
        if not args.no_plot:
            plot_table(table, out / "dial_calibration.png")
        if not args.json:
            print(f"wrote {out / TABLE_FILE}" + ("" if args.no_plot else f" and {out / 'dial_calibration.png'}"))
    if n_out and targets:
        h = ts.data.subset(held)
        if args.fit:  # the probe fitted on all calibration rows predicts the held-out rows
            X, _, _ = _features(args.fit, h.texts, config, args.seed)
            Ph, Ch = pol.predict_arrays(X, h.prompt_tokens)[:2]
        else:
            Ph, Ch, *_ = predictions(args, config, ts, held)
        r = np.arange(n_out)
        acc = h.correct.mean(0)
        best = int(acc.argmax())
        for t in targets:
            pt, why = resolve(table, t)
            idx = choose_index(Ph, Ch, lam(pt.dial, dial_cfg), dial_cfg.cost_scale)
            k = int(h.correct[r, idx].sum())
            lo, hi = wilson_interval(k, n_out)
            cost, best_cost = float(h.cost[r, idx].mean()), float(h.cost[:, best].mean())
            check = {"target": str(t), "dial": pt.dial, "why": why, "heldout_rows": n_out, "accuracy": k / n_out,
                     "interval95": [lo, hi], "best_plan": ts.plans[best], "best_accuracy": float(acc[best]),
                     "cost_per_1k": 1000 * cost, "best_cost_per_1k": 1000 * best_cost, "cost_share": cost / best_cost,
                     "share": {p: float((idx == j).mean()) for j, p in enumerate(ts.plans)}}
            if t.quality is not None:
                need = t.quality * float(acc[best])
                check["needed"] = need
                check["met"] = bool(hi >= need)  # within the binomial interval
                check["met_point_estimate"] = bool(k / n_out >= need)
            else:
                check["met"] = bool(1000 * cost <= t.budget_per_1k)
            result["checks"].append(check)
            if not args.json:
                print(f"held-out check ({n_out} rows) {t}: dial {pt.dial:g} -> accuracy {100 * k / n_out:.1f}% "
                      f"[{100 * lo:.1f}, {100 * hi:.1f}] vs best plan {ts.plans[best]} {100 * acc[best]:.1f}%"
                      + (f" (needed {100 * check['needed']:.1f}%)" if "needed" in check else "")
                      + f"; ${1000 * cost:.4g} per 1k requests = {100 * cost / best_cost:.1f}% of the best plan's "
                        f"${1000 * best_cost:.4g}; {'met' if check['met'] else 'NOT met'}")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0
