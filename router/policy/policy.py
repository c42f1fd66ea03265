"""The routing policy: per-plan predictions + the dial -> a ranked list of plans, learned across tasks.

Three layers, each small:

1. A global `Probe` (probes/probe.py) trained on the outcome log of many tasks. Its input is the
   query's features plus a *task embedding*: the mean of the probe's PCA coordinates over the
   task's queries (labels not needed). An unseen task therefore starts from what similar tasks
   taught (meta-learning in the sense of 2410.21340): its embedding is computed from its first
   unlabeled queries (`observe_queries`), and with none it is the population mean (zeros).
2. Per (task, plan) a Bayesian logistic *correction* of the probe's logit, logit' = z + a + b*z,
   with a Gaussian prior N(0, prior_var) on (a, b): `update`/`adapt` fit it by a few Newton steps
   on that task's outcomes (a contextual bandit with a Laplace posterior). With no outcomes it is
   exactly the global probe; with many it tracks the task.
3. `choose`: utility = P(correct) - lambda(dial) * cost / cost_scale over the plans that meet the hard
   limits (max_cost, max_latency_ms), ranked best first, each with its reason. With probability
   `explore_rate` (bounded by config, never above 0.5, never past a hard limit) it ranks by a
   Thompson sample of P(correct) from the correction's posterior instead (exploration).

Costs: prompt tokens are known before routing; output tokens come from the probe's token
regressor; both are priced by `SystemPrice` from config. Online, the ratio actual/predicted cost
and latency is tracked per plan (EMA) and applied to later predictions.

Call timing: `predict` + `choose` run once per request on the router's planning path (~0.1 ms,
numpy only, no I/O). `update` runs when an outcome is known (~1 ms). Not thread-safe: callers that
share one Policy across threads serialise `update` (reads are safe between updates). Never imports Ray.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from probes.probe import FeatureSelect, Probe, ProbeConfig, _logit, _sigmoid
from router import errors
from router.policy.costs import SystemPrice
from router.policy.dial import DialConfig, lam, validate_dial

DEFAULT_TASK = ""


class RoutingError(errors.InvalidRoute):
    """Base of policy errors: part of router/errors.py's hierarchy, so an ingress answers them with their
    own status (INVALID_ARGUMENT / HTTP 400 by default) and the message, never as an internal error."""


class NoFeasiblePlan(RoutingError):
    """No plan meets the request's hard limits (max_cost, max_latency_ms): the client must relax one.
    gRPC FAILED_PRECONDITION is not used because the fix is in the request: INVALID_ARGUMENT / 400."""


@dataclass
class Prediction:
    p_correct: float
    cost: float
    latency_ms: float
    tokens: float = 0.0
    #: Posterior std of the plan's logit correction (exploration width).
    logit_std: float = 0.0


@dataclass
class Candidate:
    plan: str
    p_correct: float
    cost: float
    latency_ms: float
    utility: float
    reason: str


@dataclass
class Decision:
    """`ranked` is best first (fall back down the list without re-running the policy)."""

    plan: str
    ranked: list[Candidate]
    rejected: list[Candidate]
    dial: float
    lam: float
    explored: bool = False


@dataclass
class PolicyConfig:
    #: The dial's lambda mapping and cost unit.
    dial: DialConfig = field(default_factory=DialConfig)
    #: Probability of ranking by a Thompson sample instead of the mean (0 = greedy). At most 0.5.
    explore_rate: float = 0.0
    #: Prior variance of the per-task logit correction (a, b); smaller = trust the global probe more.
    prior_var: float = 0.5
    #: Task-embedding size (leading PCA coordinates averaged over a task's queries); 0 disables.
    task_context_dim: int = 8
    #: Outcomes kept per (task, plan) for the correction fit.
    max_history: int = 2000
    #: EMA weight of one observation in the cost/latency calibration.
    calib_rate: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.dial, dict):
            self.dial = DialConfig(**self.dial)
        if not (0.0 <= self.explore_rate <= 0.5):
            raise ValueError(f"explore_rate must be in [0, 0.5], got {self.explore_rate}")
        if self.prior_var <= 0:
            raise ValueError(f"prior_var must be > 0, got {self.prior_var}")


class Policy:
    def __init__(self, probe: Probe, prices: dict[str, SystemPrice], config: PolicyConfig | None = None):
        missing = [p for p in probe.plans if p not in prices]
        if missing:
            raise ValueError(f"no price for plans {missing}; priced plans: {sorted(prices)}")
        self.probe = probe
        self.plans = list(probe.plans)
        self.prices = {p: prices[p] for p in self.plans}
        self.config = config or PolicyConfig()
        self._task_sum: dict[str, np.ndarray] = {}
        self._task_n: dict[str, int] = {}
        self._hist: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self._corr: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (mean[2], cov[2,2])
        self._calib = {p: [1.0, 1.0] for p in self.plans}  # cost, latency multipliers
        self._rng = np.random.default_rng(self.config.seed)

    # ---- training ------------------------------------------------------------------------
    @classmethod
    def fit(cls, X, correct, out_tokens, tasks, plans, prices, feature_spec, model_id, select=None, probe_config=None, config=None) -> "Policy":
        """Train on an outcome log: X [n, dim], correct/out_tokens [n, plans], tasks [n] (task names)."""
        config = config or PolicyConfig()
        tasks = np.asarray([DEFAULT_TASK if t is None else str(t) for t in tasks]) if tasks is not None else np.full(len(X), DEFAULT_TASK)
        probe = Probe(plans, feature_spec, model_id, select, probe_config)
        d = config.task_context_dim if len(set(tasks.tolist())) > 1 else 0
        if d:
            probe.fit_basis(X)  # the PCA basis the task embeddings live in
            proj = probe.project(X)[:, :d]
            emb = {t: proj[tasks == t].mean(0) for t in set(tasks.tolist())}
            probe.fit(X, correct, out_tokens, context=np.stack([emb[t] for t in tasks]), keep_basis=True)
        else:
            probe.fit(X, correct, out_tokens)
        policy = cls(probe, prices, config)
        if d:
            policy.observe_queries(X, tasks)
        return policy

    def _ctx_dim(self) -> int:
        return int(self.probe.arrays["n_context"][0]) if self.probe.arrays else 0

    def observe_queries(self, X, tasks) -> None:
        """Feed unlabeled queries of their tasks: updates the task embeddings (cheap; call freely)."""
        d = self._ctx_dim()
        if not d:
            return
        X = np.atleast_2d(X)
        tasks = _task_array(tasks, len(X))
        proj = self.probe.project(X)[:, :d]
        for t in set(tasks.tolist()):
            m = tasks == t
            self._task_sum[t] = self._task_sum.get(t, np.zeros(d)) + proj[m].sum(0)
            self._task_n[t] = self._task_n.get(t, 0) + int(m.sum())

    def task_embedding(self, task: str | None) -> np.ndarray:
        d = self._ctx_dim()
        n = self._task_n.get(task or DEFAULT_TASK, 0)
        return self._task_sum[task or DEFAULT_TASK] / n if n else np.zeros(d)

    # ---- prediction ----------------------------------------------------------------------
    def _base_logits(self, X, tasks):
        d = self._ctx_dim()
        ctx = np.stack([self.task_embedding(t) for t in tasks]) if d else None
        return self.probe.logits(X, ctx), self.probe.predict_tokens(X, ctx)

    def predict_arrays(self, X, prompt_tokens, tasks=None):
        """Vectorised predict: returns P [n, plans], cost [n, plans], latency_ms [n, plans], logit_std [n, plans]."""
        X = np.atleast_2d(X)
        tasks = _task_array(tasks, len(X))
        z, tok = self._base_logits(X, tasks)
        std = np.zeros_like(z)
        for t in set(tasks.tolist()):
            rows = tasks == t
            for j, plan in enumerate(self.plans):
                mean, cov = self._correction(t, plan)
                zz = z[rows, j]
                phi = np.stack([np.ones_like(zz), zz], 1)
                z[rows, j] = zz + phi @ mean
                std[rows, j] = np.sqrt(np.einsum("ni,ij,nj->n", phi, cov, phi))
        P = _sigmoid(z)
        pt = np.asarray(prompt_tokens, np.float64).reshape(-1, 1) * np.ones((1, len(self.plans)))
        C = np.stack([self.prices[p].cost(pt[:, j], tok[:, j]) * self._calib[p][0] for j, p in enumerate(self.plans)], 1)
        L = np.stack([self.prices[p].latency_ms(tok[:, j]) * self._calib[p][1] for j, p in enumerate(self.plans)], 1)
        return P, C, L, std

    def predict(self, features, prompt_tokens: int, task: str | None = None) -> dict[str, Prediction]:
        """One query's features [dim] -> {plan: Prediction}."""
        P, C, L, S = self.predict_arrays(np.atleast_2d(features), [prompt_tokens], [task])
        tok = self.probe.predict_tokens(np.atleast_2d(features), np.atleast_2d(self.task_embedding(task)) if self._ctx_dim() else None)
        return {p: Prediction(float(P[0, j]), float(C[0, j]), float(L[0, j]), float(tok[0, j]), float(S[0, j])) for j, p in enumerate(self.plans)}

    # ---- decision ------------------------------------------------------------------------
    def choose(self, predictions: dict[str, Prediction], dial: float, max_cost: float | None = None, max_latency_ms: float | None = None, explore: bool = True) -> Decision:
        """Rank plans by P - lambda(dial)*cost/cost_scale within the hard limits. Raises NoFeasiblePlan."""
        return choose(predictions, dial, self.config, self._rng, max_cost, max_latency_ms, explore)

    def choose_arrays(self, P, C, dial, L=None, max_cost=None, max_latency_ms=None) -> np.ndarray:
        """Vectorised greedy `choose` for offline evaluation: index of the chosen plan per row (-1: none feasible)."""
        lmb = lam(dial, self.config.dial)
        return choose_index(P, C, lmb, self.config.dial.cost_scale, L, max_cost, max_latency_ms)

    # ---- learning from outcomes ------------------------------------------------------------
    def update(self, features, plan: str, correct: bool, cost: float | None = None, latency_ms: float | None = None, task: str | None = None, prompt_tokens: int | None = None) -> None:
        """Record one outcome of `plan` on a query and refit that (task, plan) correction."""
        if plan not in self.plans:
            raise ValueError(f"unknown plan {plan!r}; plans: {self.plans}")
        t = task or DEFAULT_TASK
        j = self.plans.index(plan)
        z, tok = self._base_logits(np.atleast_2d(features), np.array([t]))
        h = self._hist.setdefault((t, plan), [])
        h.append((float(z[0, j]), float(bool(correct))))
        del h[: max(0, len(h) - self.config.max_history)]
        self._refit(t, plan)
        r = self.config.calib_rate
        if cost is not None and prompt_tokens is not None:
            pred = float(self.prices[plan].cost(prompt_tokens, tok[0, j]))
            if pred > 0:
                self._calib[plan][0] = (1 - r) * self._calib[plan][0] + r * (cost / pred)
        if latency_ms is not None:
            pred = float(self.prices[plan].latency_ms(tok[0, j]))
            self._calib[plan][1] = (1 - r) * self._calib[plan][1] + r * (latency_ms / pred)

    def adapt(self, X, correct, task: str | None = None) -> None:
        """Few-shot adaptation with full-information labels: X [k, dim], correct [k, plans]."""
        X = np.atleast_2d(X)
        t = task or DEFAULT_TASK
        self.observe_queries(X, [t] * len(X))
        z, _ = self._base_logits(X, np.array([t] * len(X)))
        correct = np.asarray(correct, np.float64).reshape(len(X), len(self.plans))
        for j, plan in enumerate(self.plans):
            h = self._hist.setdefault((t, plan), [])
            h.extend(zip(z[:, j].tolist(), correct[:, j].tolist()))
            del h[: max(0, len(h) - self.config.max_history)]
            self._refit(t, plan)

    def _correction(self, task: str, plan: str):
        got = self._corr.get((task, plan))
        if got is None:
            return np.zeros(2), np.eye(2) * self.config.prior_var
        return got

    def _refit(self, task: str, plan: str) -> None:
        """MAP + Laplace covariance of (a, b) in logit' = z + a + b z, prior N(0, prior_var I)."""
        zs, ys = map(np.array, zip(*self._hist[(task, plan)]))
        self._corr[(task, plan)] = fit_correction(zs, ys, self.config.prior_var)

    def fork(self) -> "Policy":
        """A copy sharing the (read-only) probe with its own online state: for what-if adaptation."""
        other = Policy(self.probe, self.prices, self.config)
        other._task_sum = {t: v.copy() for t, v in self._task_sum.items()}
        other._task_n = dict(self._task_n)
        other._hist = {k: list(v) for k, v in self._hist.items()}
        other._corr = dict(self._corr)
        other._calib = {p: list(v) for p, v in self._calib.items()}
        return other

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Directory with the probe, prices, config and the online state (task embeddings, outcomes)."""
        path = Path(path)
        self.probe.save(path / "probe")
        state = {
            "plans": self.plans,
            "prices": {p: asdict(v) for p, v in self.prices.items()},
            "config": asdict(self.config),
            "task_sum": {t: v.tolist() for t, v in self._task_sum.items()},
            "task_n": self._task_n,
            "history": [[t, p, h] for (t, p), h in self._hist.items()],
            "calib": self._calib,
        }
        (path / "policy.json").write_text(json.dumps(state))
        return path

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None) -> "Policy":
        """Load a saved policy; with `model_id`, refuse a probe trained on another model."""
        path = Path(path)
        probe = Probe.load(path / "probe", model_id=model_id)
        s = json.loads((path / "policy.json").read_text())
        pol = cls(probe, {p: SystemPrice(**v) for p, v in s["prices"].items()}, PolicyConfig(**s["config"]))
        pol._task_sum = {t: np.array(v) for t, v in s["task_sum"].items()}
        pol._task_n = {t: int(n) for t, n in s["task_n"].items()}
        for t, p, h in s["history"]:
            pol._hist[(t, p)] = [tuple(x) for x in h]
            pol._refit(t, p)
        pol._calib = {p: list(v) for p, v in s["calib"].items()}
        return pol


def fit_correction(zs, ys, prior_var: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-(task, plan) Bayesian logistic correction: MAP (a, b) of logit' = z + a + b z on base logits `zs`
    and outcomes `ys` in [0, 1] (soft labels allowed), prior N(0, prior_var I), and its Laplace covariance.
    Shared by `Policy.update`/`adapt` and the router's online feedback (router/feedback.py)."""
    zs, ys = np.asarray(zs, np.float64), np.asarray(ys, np.float64)
    phi = np.stack([np.ones_like(zs), zs], 1)
    w = np.zeros(2)
    prec0 = np.eye(2) / prior_var

    def objective(w):
        m = zs + phi @ w
        return float(np.sum(np.logaddexp(0, m) - ys * m) + 0.5 * w @ prec0 @ w)

    f = objective(w)
    for _ in range(30):  # damped Newton: halve the step until the (convex) objective drops
        p = _sigmoid(zs + phi @ w)
        grad = phi.T @ (p - ys) + prec0 @ w
        hess = (phi * (p * (1 - p))[:, None]).T @ phi + prec0
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-4 and objective(w - t * step) > f:
            t *= 0.5
        w = w - t * step
        f = objective(w)
        if np.abs(t * step).max() < 1e-6:
            break
    p = _sigmoid(zs + phi @ w)
    hess = (phi * (p * (1 - p))[:, None]).T @ phi + prec0
    return w, np.linalg.inv(hess)


def choose(predictions: dict[str, Prediction], dial: float, config: PolicyConfig, rng: np.random.Generator,
           max_cost: float | None = None, max_latency_ms: float | None = None, explore: bool = True) -> Decision:
    """The decision rule alone (no probe): rank plans by P - lambda(dial)*cost/cost_scale within the hard
    limits; with `explore` and `config.explore_rate`, sometimes rank a Thompson sample. Raises NoFeasiblePlan."""
    d = validate_dial(dial)
    lmb = lam(d, config.dial)
    explored = explore and config.explore_rate > 0 and rng.random() < config.explore_rate
    ranked, rejected = [], []
    for plan, pr in predictions.items():
        if max_cost is not None and pr.cost > max_cost:
            rejected.append(Candidate(plan, pr.p_correct, pr.cost, pr.latency_ms, -math.inf, f"predicted cost ${pr.cost:.6f} > max_cost ${max_cost:.6f}"))
            continue
        if max_latency_ms is not None and pr.latency_ms > max_latency_ms:
            rejected.append(Candidate(plan, pr.p_correct, pr.cost, pr.latency_ms, -math.inf, f"predicted latency {pr.latency_ms:.0f} ms > max_latency_ms {max_latency_ms:.0f}"))
            continue
        p = pr.p_correct
        if explored:
            p = float(_sigmoid(_logit(p) + rng.normal() * pr.logit_std))
        c = pr.cost / config.dial.cost_scale
        util = p if lmb == 0 else (-c if math.isinf(lmb) else p - lmb * c)
        ranked.append(Candidate(plan, pr.p_correct, pr.cost, pr.latency_ms, util,
                                f"utility {util:.4g} = P {p:.3f} - lambda {lmb:.3g} x cost ${pr.cost:.6f}" + (" (explore sample)" if explored else "")))
    if not ranked:
        raise NoFeasiblePlan(f"no plan meets the limits max_cost={max_cost}, max_latency_ms={max_latency_ms}: " + "; ".join(f"{c.plan}: {c.reason}" for c in rejected) + ". Raise a limit or add a cheaper plan.")
    # ties: higher P, then lower cost, then name (deterministic)
    ranked.sort(key=lambda c: (-c.utility, -c.p_correct, c.cost, c.plan))
    return Decision(ranked[0].plan, ranked, rejected, d, lmb, explored)


def choose_index(P, C, lmb, cost_scale=1.0, L=None, max_cost=None, max_latency_ms=None) -> np.ndarray:
    """argmax_j P - lmb*C/cost_scale per row among feasible plans (ties: higher P, then lower cost)."""
    P, C = np.asarray(P, np.float64), np.asarray(C, np.float64)
    feas = np.ones_like(P, bool)
    if max_cost is not None:
        feas &= C <= max_cost
    if max_latency_ms is not None and L is not None:
        feas &= np.asarray(L) <= max_latency_ms
    if math.isinf(lmb):
        util = -C + 1e-9 * P * C.min(1, keepdims=True).clip(1e-12)
    elif lmb == 0:
        util = P - 1e-12 * C / (C.max(1, keepdims=True) + 1e-30)
    else:
        util = P - lmb * C / cost_scale
    util = np.where(feas, util, -np.inf)
    idx = util.argmax(1)
    idx[~feas.any(1)] = -1
    return idx


def _task_array(tasks, n) -> np.ndarray:
    if tasks is None:
        return np.full(n, DEFAULT_TASK, dtype=object)
    if isinstance(tasks, str):
        return np.full(n, tasks, dtype=object)
    return np.array([DEFAULT_TASK if t is None else str(t) for t in tasks], dtype=object)
