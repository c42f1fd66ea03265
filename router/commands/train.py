"""`thinkroute train`: outcome files -> a servable policy artifact (`policy.artifact`).

Examples:
    thinkroute train --outcomes runs/collect/embedded.jsonl --out runs/policy        # in-process drafter
    thinkroute train --outcomes A.jsonl B.jsonl --out runs/policy --features worker --worker 127.0.0.1:50051
    thinkroute train --config router/configs/replay_gsm8k_6sys.yaml --outcomes train.jsonl --out runs/p \\
        --layers 2 4 8 --pooling last mean --minilm
    thinkroute train --config C.yaml --outcomes collected.jsonl --from-log --out runs/policy2   # + the feedback log
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = """Fit the planning policy of a router config on outcome files and save it as an artifact the router
serves (`policy.artifact: DIR`, or `thinkroute policy reload --artifact DIR` on a running router).

Outcome files: JSON lines as `thinkroute collect` writes and `route-eval` reads: the query text, an optional
`task`, and per plan (each key of the config's policy.candidates, all of them, no others) an object with
`is_correct` and optionally `tokens` ({model: generated tokens}) or `solution`. Costs: the config's
policy.prices (USD per million tokens per model).

Features: the drafter's hidden states (the model of policy.drafter_role), computed in-process from the same
weights (`--features local`, default) or read over the HiddenState RPC of a running worker (`--features worker
--worker HOST:PORT`, default the drafter pool's configured address); both give the same numbers (within
2e-3, a tested bound) and are cached on disk ($THINKROUTE_CACHE/features). `--features noise|length` train
the same policy on random features or on the prompt length alone (baselines the router serves the same way).

The artifact directory holds the Policy (probe/, policy.json), train.json (model id, feature spec, plans,
prices, outcome files with sha256, and the cross-validated metrics on the training rows: area, APGR and the
cost to reach the best plan's accuracy for the probe and route-eval's baselines, with route-eval's rule:
operating points fixed on training folds) and calibration.png (out-of-fold predicted vs observed P(correct)).

--from-log: the deployment's decision log as the next training file. Without FILE, the joined outcomes of the
config's deployment (policy.feedback: its Redis, or policy.feedback.dir) are exported to DIR/from_log.jsonl
first (what `thinkroute feedback export` writes); with FILE, that exported file is read. Each log row is one
judged request: its text, task and only the plan that answered (is_correct = score >= 0.5; tokens from its
logged cost at the config's prices). These bandit rows judge a subset of the plans, so each plan's P(correct)
and token heads are fitted only on the rows where that plan was judged; every plan must be judged somewhere
(give a collected outcome file with --outcomes beside the log). Rows of the same text merge across files (the
first outcome of a plan wins). route-eval's cross-validated metrics and the operating points are computed on
the rows with every plan judged (the --outcomes files), or skipped when fewer than 2 x --cv rows are complete.
Not done: no off-policy correction (no inverse-propensity weighting): the log holds the plans an earlier policy
chose, so a plan it rarely chose is learned from few, selected rows."""


def register(sub) -> None:
    p = sub.add_parser("train", help="fit a servable routing policy on outcome files", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outcomes", nargs="+", default=[], metavar="FILE", help="outcome files (JSON lines), every plan "
                   "per row (required unless --from-log)")
    p.add_argument("--from-log", nargs="?", const="", default=None, metavar="FILE",
                   help="also train on the decision log's judged requests (bandit rows): FILE as `thinkroute feedback "
                   "export` wrote it, or, without FILE, exported now from the config's deployment to DIR/from_log.jsonl")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    p.add_argument("--config", metavar="YAML", help="router config whose policy is trained (default: the embedded one)")
    p.add_argument("--features", choices=["local", "worker", "noise", "length"], default="local",
                   help="local: the drafter in-process (default); worker: its HiddenState RPC; noise/length: baselines")
    p.add_argument("--worker", metavar="HOST:PORT", help="drafter worker for --features worker (default: the config's address)")
    p.add_argument("--layers", nargs="+", type=int, default=[-1], help="hidden-state layers (default: -1, the last)")
    p.add_argument("--pooling", nargs="+", default=["last"], choices=["last", "mean"], help="token pooling (default: last)")
    p.add_argument("--max-tokens", type=int, default=256, help="read the last N prompt tokens (default 256)")
    p.add_argument("--uncertainty", action=argparse.BooleanOptionalAction, default=True,
                   help="add the drafter's next-token entropy, top-1 probability and log prompt tokens (default: on)")
    p.add_argument("--pca-dim", type=int, default=64, help="probe PCA components (default 64)")
    p.add_argument("--noise-dim", type=int, default=64, help="dimension of --features noise (default 64)")
    p.add_argument("--cv", type=int, default=5, help="folds of the cross-validated estimate (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minilm", action="store_true", help="also cross-validate route-eval's MiniLM and kNN baselines")
    p.add_argument("--text-field", help="the query text field (default: question, prompt, query or text)")
    p.add_argument("--task-field", default="task", help="the task/group field (default: task)")
    p.add_argument("--limit", type=int, help="train on a random N rows (quick runs)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the area interval (default 200)")
    p.add_argument("--no-cache", action="store_true", help="recompute hidden states instead of reading the disk cache")
    p.add_argument("--no-plot", action="store_true", help="skip calibration.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print train.json instead of the summary table")
    p.set_defaults(func=run)


def drafter_of(config) -> tuple[str, str]:
    """(drafter pool name, the model id its workers report) of the config's policy."""
    role = config.policy.drafter_role
    pool = config.router.roles.get(role, config.router.default_model)
    spec = config.models.get(pool)
    return pool, (spec.model if spec is not None and spec.model else pool)


def build_source(args, config, progress: bool):
    """The feature source of `--features` (hidden-state sources behind the disk cache)."""
    from probes.features import CachedSource, LocalHiddenStates, WorkerHiddenStates
    from router.learn.textfeat import LengthFeatures, NoiseFeatures

    if args.features == "noise":
        return NoiseFeatures(args.noise_dim, args.seed)
    if args.features == "length":
        return LengthFeatures()
    pool, model_id = drafter_of(config)
    kw = dict(layers=args.layers, pooling=args.pooling, max_tokens=args.max_tokens or None, uncertainty=args.uncertainty,
              progress=progress)
    if args.features == "local":
        src = LocalHiddenStates(model_id, **kw)
    else:
        address = args.worker or next(iter(config.models[pool].addresses), None)
        if not address:
            raise SystemExit(f"--features worker: give --worker HOST:PORT (the config lists no address for pool {pool!r})")
        src = WorkerHiddenStates(address, **kw)
        if src.model_id != model_id:
            src.close()
            raise SystemExit(f"the worker at {address} serves {src.model_id!r} but the config's drafter (pool {pool!r}, "
                             f"policy.drafter_role {config.policy.drafter_role!r}) is {model_id!r}: point --worker at a "
                             f"{model_id!r} worker")
    return src if args.no_cache else CachedSource(src, progress=progress)


def run(args) -> int:
    import os

    from router.config import load_config
    from router.learn.fit import print_summary, train_artifact
    from router.learn.outcomes import OutcomeError, load_training_set

    progress = not args.no_progress
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    config = load_config(args.config)
    if not args.outcomes and args.from_log is None:
        print("train: give --outcomes FILE [FILE ...] and/or --from-log [FILE]", file=sys.stderr)
        return 2
    partial: list[str] = []
    if args.from_log is not None:
        try:
            partial = [log_file(args, config)]
        except (OutcomeError, OSError) as e:
            print(f"train: --from-log: {e}", file=sys.stderr)
            return 2
    try:
        ts = load_training_set(args.outcomes, config, args.text_field, args.task_field, args.limit, partial=partial)
    except OutcomeError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    src = build_source(args, config, progress)
    X = src.features(ts.data.texts)
    spec, model_id = dict(src.spec), src.model_id
    meta = {"name": "train", "router_config": args.config or "embedded", "features": args.features,
            "command": "thinkroute train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "thinkroute train"}
    try:
        info = train_artifact(ts, X, spec, model_id, args.out, probe={"pca_dim": args.pca_dim, "seed": args.seed}, cv=args.cv,
                              seed=args.seed, minilm=args.minilm, progress=progress, meta=meta, bootstrap=args.bootstrap,
                              plot=not args.no_plot, extra=_minilm(ts, progress) if args.minilm else None)
    except ValueError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=1, default=float))
    else:
        print_summary(info)
        print(f"artifact: {args.out} (serve it with policy.artifact, or `thinkroute policy reload --artifact {args.out}`)")
    return 0


def log_file(args, config) -> str:
    """The --from-log training file: the given export, or the deployment's decision log exported to
    <out>/from_log.jsonl now (router/feedback.py export_outcomes)."""
    import asyncio
    from pathlib import Path

    from router.learn.outcomes import OutcomeError

    if args.from_log:
        if not Path(args.from_log).is_file():
            raise OutcomeError(f"log file {args.from_log} not found (write one with `thinkroute feedback export --out FILE`)")
        return args.from_log
    if config.policy is None:
        raise OutcomeError("the config has no `policy:` section, so its routers log no decisions")
    from router.feedback import export_outcomes

    out = str(Path(args.out) / "from_log.jsonl")
    n = asyncio.run(export_outcomes(config, out))
    print(f"exported {n} judged requests from the decision log to {out}", file=sys.stderr)
    if not n:
        raise OutcomeError(f"the decision log of this deployment holds no judged requests (feedback) yet; wrote {out} empty")
    return out


def _minilm(ts, progress: bool) -> dict:
    from probes.features import CachedSource, MiniLMEmbeddings

    src = CachedSource(MiniLMEmbeddings(max_tokens=256, progress=progress), progress=progress)
    return {"minilm": (src.features(ts.data.texts), dict(src.spec), src.model_id)}
