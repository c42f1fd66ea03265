"""`thinkroute route-eval`: offline routing quality on outcome logs (probe policy vs baselines).

Examples:
    thinkroute route-eval --config router/configs/routing/gsm8k_6sys.yaml --cv 5 --plot docs/bench/routing.png
    thinkroute route-eval --config router/configs/routing/mmlu.yaml --cv 5 --group-by subject --meta
    thinkroute route-eval --data ../shared/data/routing/gsm8k_gpt3_outcomes.dev.jsonl --cv 5 --json
    thinkroute route-eval --config C.yaml --train A.jsonl --eval B.jsonl
    thinkroute route-eval --config router/configs/routing/reasoning.yaml --group-by dataset --cv 2   # SimpleQA <-> FRAMES
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HELP = """Evaluate routing policies offline on outcome files (one JSON line per query: the text and, per
system, {"is_correct", "solution"?}). Costs = token counts (SmolLM2-135M tokenizer) x prices x
samples from the routing config. Methods, all on the same folds and all learned ones through the same
policy code: `probe` (the servable probe: the drafter's hidden states exactly as the worker HiddenState
RPC returns them), probe variants from the config (`probe[...]`; `(not servable)` when the router cannot
compute their features live), and the baselines `noise` (random features of the probe's dimension),
`length` (log prompt tokens), `base-rate` (no features), MiniLM embeddings (`minilm*`), `knn[...]`,
always-cheapest, always-best and the single-system envelope; `oracle` is a label-reading ceiling.
Configs with a `reasoning:` section (plans `<model>:<level>`, router/configs/routing/reasoning.yaml) add
the reasoning-mode anchors (always-no-think, always-largest-level, best-fixed-level, three-tier[MODEL])
and a per-fold reading of two targets: the best plan's accuracy at <= 10 % of its cost, +3 points at
<= its cost.
Operating points are fixed on the training rows (dials whose training cost hits fixed log-cost
quantiles between the cheapest and the best system) and only those are evaluated; a method's curve is
the upper hull of its own points. Metrics: area under accuracy vs log(cost) between the cheapest and
the best system's cost (mean accuracy over log-uniform budgets), APGR, cost to reach X % of the best
system's accuracy. Claims: paired per-fold area differences, probe minus each baseline, with bootstrap
95 % intervals (evaluation rows, or whole groups, resampled within folds).
Features are cached under $THINKROUTE_CACHE/features, so a second run is fast."""


def register(subparsers) -> None:
    p = subparsers.add_parser("route-eval", help="offline routing quality: probe policy vs baselines on outcome logs", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="routing-eval config (router/configs/routing/*.yaml); repeat for several data sets (one plot panel each)")
    p.add_argument("--data", metavar="FILE", help="outcome file; prices from the shipped config with the same systems (or --config)")
    p.add_argument("--train", metavar="FILE", help="train on this file and evaluate on --eval (instead of --cv)")
    p.add_argument("--eval", metavar="FILE", help="evaluation file for --train")
    p.add_argument("--cv", type=int, metavar="K", help="K-fold cross-validation (default: the config's cv, 5)")
    p.add_argument("--group-by", metavar="FIELD", help="make folds of whole groups (leave-groups-out), e.g. subject")
    p.add_argument("--meta", action="store_true", help="also run the unseen-group meta-learning experiment (needs groups)")
    p.add_argument("--limit", type=int, metavar="N", help="use a random N rows (quick runs)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the full results as JSON (to stdout without PATH)")
    p.add_argument("--plot", metavar="PNG", help="accuracy vs cost (log x) per method, one panel per data set")
    p.add_argument("--replot", nargs="+", metavar="JSON", help="only redraw --plot (and print tables) from earlier --json outputs")
    p.add_argument("--decisions", metavar="PATH", help="write one JSON line per (method, operating point, evaluation row): "
                   '{"method", "point", "plan", "text_sha256"} (sha256 of the row text, UTF-8), to re-score with any cost model')
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="only these methods (default: all)")
    p.add_argument("--make-split", nargs=2, metavar=("FILE", "OUTDIR"), help="write FILE's documented dev/other split "
                   "(whole groups with --group-by, else rows; by sha256 of the group or text) as OUTDIR/NAME.dev.jsonl and NAME.other.jsonl")
    p.add_argument("--other-share", type=float, default=0.3, help="share of groups/rows in the `other` part of --make-split (default 0.3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _source(spec: dict, progress: bool = True):
    from probes.features import SOURCES, CachedSource

    spec = dict(spec)
    kind = spec.pop("source", "local")
    if kind not in SOURCES:
        raise ValueError(f"invalid feature source {kind!r}: use one of {sorted(SOURCES)}")
    return CachedSource(SOURCES[kind](**spec, progress=progress), progress=progress)


def run_config(cfg, args, sources=None, count_tokens=None) -> dict:
    """Load data, compute (cached) features, evaluate. `sources`/`count_tokens` are injectable for tests."""
    from router.policy.evaluate import Outcomes, evaluate, load_outcomes, make_folds, meta_experiment

    progress = not getattr(args, "no_progress", False)
    group = args.group_by or cfg.group_field
    if args.train:
        if not args.eval:
            raise SystemExit("--train needs --eval")
        tr = load_outcomes(cfg, args.train, args.limit, count_tokens, group)
        ev = load_outcomes(cfg, args.eval, args.limit, count_tokens, group)
        data = Outcomes(tr.texts + ev.texts, None if tr.groups is None else np.concatenate([tr.groups, ev.groups]), tr.systems,
                        *(np.concatenate([getattr(tr, k), getattr(ev, k)]) for k in ("correct", "out_tokens", "prompt_tokens", "cost")))
        folds = [(np.arange(len(tr.texts)), np.arange(len(tr.texts), len(data.texts)))]
    else:
        data = load_outcomes(cfg, args.data, args.limit, count_tokens, group)
        folds = make_folds(len(data.texts), args.cv or cfg.cv, data.groups if group else None, cfg.seed)
    if sources is None:
        sources = {"probe": _source(cfg.features, progress)}
        sources.update({name: _source(spec, progress) for name, spec in cfg.baseline_features.items()})
    feats, specs = {}, {}
    for name, src in sources.items():
        feats[name] = src.features(data.texts)
        specs[name] = (dict(src.spec), src.model_id)
    out = None
    try:
        if getattr(args, "decisions", None):
            Path(args.decisions).parent.mkdir(parents=True, exist_ok=True)
            out = open(args.decisions, "w")
        res = evaluate(cfg, data, feats, specs, folds, progress, getattr(args, "methods", None), getattr(args, "bootstrap", 1000), out)
    finally:
        if out is not None:
            out.close()
    res["group_by"] = group
    if cfg.reasoning:
        from router.policy.reasoning_eval import targets

        res["targets"] = targets(res)
    if args.train:
        res["train"], res["eval"] = args.train, args.eval
    if args.meta:
        if data.groups is None:
            raise SystemExit("--meta needs groups: --group-by FIELD or a config with group_field")
        res["meta"] = meta_experiment(cfg, data, feats["probe"], *specs["probe"], folds, progress)
    return res


def make_split(path: str, outdir: str, group_field: str | None, share: float, text_field: str) -> tuple[Path, Path]:
    """The documented dev/other split: a row (or its whole group) goes to `other` when the first 8 hex
    digits of sha256(group or text) / 16**8 < share. Deterministic, label-free, reproducible anywhere."""
    import hashlib

    from router.policy.evaluate import _open

    if not 0 < share < 1:
        raise SystemExit(f"--other-share must be in (0, 1), got {share}")
    name = Path(path).name.split(".")[0]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    dev, other = out / f"{name}.dev.jsonl", out / f"{name}.other.jsonl"
    with _open(path) as f, dev.open("w") as fd, other.open("w") as fo:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            key = str(row[group_field]) if group_field else row[text_field]
            h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 16**8
            (fo if h < share else fd).write(line if line.endswith("\n") else line + "\n")
    return dev, other


def _fmt(mean, std, pct=False):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if math.isinf(mean):
        return "never"
    return f"{100 * mean:.1f}±{100 * std:.1f}%" if pct else f"{mean:.4f}±{std:.4f}"


def print_table(res: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"\n== {res['dataset']}: {res['n']} queries, {res['folds']} folds" + (f" (groups: {res['group_by']})" if res.get("group_by") else "") + f"; tokens: {res['tokenizer']}", file=out)
    for s, v in res["singles"].items():
        print(f"   {s:24s} acc {100 * v['acc']:.1f}%  cost/query ${v['cost_per_query']:.6f}", file=out)
    head = f"{'method':40s} {'area (95% CI)':>26s} {'acc@best-cost':>14s} {'APGR':>14s} {'cost@80%':>13s} {'cost@95%':>13s} {'cost@100%':>13s}"
    print(head, file=out)
    for name, m in res["methods"].items():
        mu, sd = m["mean"], m["std"]
        lo, hi = m["area_ci95"]
        line = f"{name:40s} {mu['area']:.4f} [{lo:.4f}, {hi:.4f}]{'':3s} {_fmt(mu['acc_at_best_cost'], sd['acc_at_best_cost'], True):>14s} {_fmt(mu['apgr'], sd['apgr']):>14s}"
        for k in ("cost80_rel", "cost95_rel", "cost_rel_to_match_best"):
            line += f" {_fmt(mu[k], sd[k], True):>13s}"
        print(line, file=out)
    print("   area CI: bootstrap 95 % interval of the fold mean; cost@X% = budget to reach X% of the always-best system's accuracy, as a share of its cost", file=out)
    if res.get("comparisons"):
        sb = res["strongest_baseline"]
        print(f"   strongest baseline (highest mean area): {sb}", file=out)
        for p, comp in res["comparisons"].items():
            c = comp[sb]
            print(f"   {p} - {sb}: {c['mean_diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] -> {c['verdict']} (ahead on {c['folds_ahead']} folds)", file=out)
    if res.get("targets"):
        from router.policy.reasoning_eval import print_targets

        print_targets(res["targets"], out)
    if "meta" in res:
        me = res["meta"]
        print(f"   meta-learning on unseen groups ({me['groups_evaluated']} groups x {me['repeats']} draws; area mean over groups, ±std over folds):", file=out)
        for key, v in me["summary"].items():
            print(f"     {key:16s} {v['mean']:.4f} ±{v['fold_std']:.4f}", file=out)
        kmax = max(me["ks"])
        print(f"     share of (group, draw) where a_k0 area > c_k{kmax} area: {me[f'a_k0_beats_c_k{kmax}_share']:.2f}", file=out)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from router.policy import metrics as M

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        fixed = {"probe": "tab:blue", "minilm": "tab:red", "noise": "tab:gray", "base-rate": "tab:brown", "length": "gold",
                 "single-envelope": "black", "oracle": "tab:olive", "always-cheapest": "tab:green", "always-best": "tab:purple"}
        extra = iter(["tab:orange", "tab:cyan", "tab:pink", "tab:brown", "gold", "navy"])
        for name, m in res["methods"].items():
            color = fixed.get(name) or next(extra, None)
            pts = [(p["cost"], p["acc"]) for p in m["points"]]
            if name == "single-envelope":
                for s, v in res["singles"].items():
                    ax.scatter([v["cost_per_query"]], [v["acc"]], marker="x", color="k", s=20)
                    ax.annotate(s, (v["cost_per_query"], v["acc"]), fontsize=6)
            h = M.hull(pts)
            style = "-" if name in ("probe", "minilm") else ("--" if "[" in name else ":")
            if len(h) == 1:
                ax.scatter(h[:, 0], h[:, 1], label=name, s=25, color=color)
            else:
                if len(h) == 2:  # a chord: draw it densely so it curves correctly on the log axis
                    xs = np.linspace(h[0, 0], h[1, 0], 200)
                    h = np.stack([xs, M.curve_at(h, xs)], 1)
                ax.plot(h[:, 0], h[:, 1], style, label=name, lw=2 if name == "probe" else 1.2, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per query (USD, log)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{res['dataset']} ({res['folds']}-fold, pooled out-of-fold, points fixed on training rows)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args) -> int:
    from router.policy.evaluate import config_for_data, load_config

    if args.replot:
        results = []
        for path in args.replot:
            got = json.loads(Path(path).read_text())
            results.extend(got if isinstance(got, list) else [got])
        for res in results:
            print_table(res)
        if args.plot:
            plot(results, args.plot)
        return 0
    if args.no_progress:
        import os

        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    if args.make_split:
        from router.policy.evaluate import config_for_data, load_config

        cfg = load_config(args.config[0]) if args.config else config_for_data(args.make_split[0])
        dev, other = make_split(args.make_split[0], args.make_split[1], args.group_by or cfg.group_field, args.other_share, cfg.text_field)
        print(f"{dev}\n{other}")
        return 0
    if not args.config and not (args.data or args.train):
        print("route-eval: give --config YAML, or --data FILE, or --train FILE --eval FILE (see --help)", file=sys.stderr)
        return 2
    configs = [load_config(c) for c in args.config] if args.config else [config_for_data(args.data or args.train)]
    if args.data and len(configs) > 1:
        print("route-eval: --data goes with at most one --config", file=sys.stderr)
        return 2
    results = []
    for cfg in configs:
        res = run_config(cfg, args)
        results.append(res)
        print_table(res, sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps(results if len(results) > 1 else results[0], indent=1, default=float)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
