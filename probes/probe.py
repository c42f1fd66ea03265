"""Probe: query features -> P(correct) and expected output tokens, per candidate system/plan.

A linear model on the drafter's hidden states (DiffAdapt, 2510.19669): select columns (layers,
pooling, uncertainty) -> standardise -> PCA (whitened) -> one L2 logistic regression per plan for
P(correct) (C picked by 3-fold CV on log-loss over a fixed grid) and one ridge per plan for log1p(output tokens).
Every piece is linear, so the artifact is plain arrays (`probe.npz`) plus metadata (`probe.json`):
no pickle. The metadata records the feature spec and the model id whose hidden states the probe
reads; `Probe.load(path, model_id=...)` and `check_source` refuse any other model.

Call timing: `fit` offline (seconds for 10k rows); `predict_*` per request on one row (~50 us).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
N_UNCERTAINTY = 3  # entropy, top-1 probability, log(prompt tokens): see probes/features.py


class ProbeError(ValueError):
    """A probe cannot be used as asked (bad input, or features from the wrong model)."""


class ProbeModelMismatch(ProbeError):
    pass


@dataclass
class FeatureSelect:
    """Which columns of a hidden-state feature vector the probe reads (None = all)."""

    #: Layer indices, as in the source spec (e.g. [8, 16, -1]).
    layers: list[int] | None = None
    #: "last" and/or "mean".
    pooling: list[str] | None = None
    #: Include the drafter's uncertainty columns (entropy, top-1 prob, log tokens) when present.
    uncertainty: bool = True

    def columns(self, spec: dict, dim: int) -> np.ndarray:
        if spec.get("source") != "hidden_states":
            return np.arange(dim)
        layers, pools = list(spec["layers"]), list(spec["pooling"])
        unc = N_UNCERTAINTY if spec.get("uncertainty") else 0
        hidden = (dim - unc) // (len(layers) * len(pools))
        if hidden * len(layers) * len(pools) + unc != dim:
            raise ProbeError(f"feature dim {dim} does not match spec {spec}")
        want_l = layers if self.layers is None else self.layers
        want_p = pools if self.pooling is None else self.pooling
        missing = [x for x in want_l if x not in layers] + [p for p in want_p if p not in pools]
        if missing:
            raise ProbeError(f"selection asks for {missing}, the features hold layers {layers} and pooling {pools}")
        cols = []
        for i, layer in enumerate(layers):
            for j, p in enumerate(pools):
                if layer in want_l and p in want_p:
                    start = (i * len(pools) + j) * hidden
                    cols.append(np.arange(start, start + hidden))
        if unc and self.uncertainty:
            cols.append(np.arange(dim - unc, dim))
        return np.concatenate(cols)


@dataclass
class ProbeConfig:
    #: PCA components kept (capped by rows - 1 and columns).
    pca_dim: int = 128
    #: Inverse L2 strengths tried by 3-fold CV on the training rows for each plan's logistic regression.
    #: Fixed a priori (a decade grid wide enough for whitened PCA inputs), never tuned on evaluation rows.
    Cs: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    #: Ridge strength for the token regressors.
    ridge_alpha: float = 10.0
    seed: int = 0


class Probe:
    """Per-plan P(correct) and expected output tokens from one feature vector."""

    def __init__(self, plans: list[str], feature_spec: dict, model_id: str, select: FeatureSelect | None = None, config: ProbeConfig | None = None):
        if not plans:
            raise ProbeError("a probe needs at least one plan")
        self.plans = list(plans)
        self.feature_spec = dict(feature_spec)
        self.model_id = model_id
        self.select = select or FeatureSelect()
        self.config = config or ProbeConfig()
        self.arrays: dict[str, np.ndarray] = {}

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, X: np.ndarray, correct: np.ndarray, out_tokens: np.ndarray | None = None, context: np.ndarray | None = None, sample_weight: np.ndarray | None = None, keep_basis: bool = False) -> "Probe":
        """X [n, dim] features; correct [n, plans] 0/1; out_tokens [n, plans]; context [n, c] extra
        (already meaningful, e.g. a task embedding) columns appended after PCA. `keep_basis` reuses
        the PCA basis of a previous `fit_basis`/`fit` on the same features.

        NaN in `correct` (or `out_tokens`) means "not observed" (bandit rows: only the plan that answered is
        judged): each plan's P(correct) head (and token head) is fitted on the rows where it is observed; the
        PCA basis uses every row (it needs no labels). No off-policy correction: observed rows are weighted as
        given (`sample_weight`), whichever policy chose them."""
        X = np.asarray(X, np.float64)
        correct = np.asarray(correct, np.float64).reshape(len(X), len(self.plans))
        if not (keep_basis and self.arrays):
            self.fit_basis(X)
        H = self._with_context(self.project(X), context)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        coef = np.zeros((len(self.plans), H.shape[1]))
        icpt = np.zeros(len(self.plans))
        self.chosen_C: list[float | None] = []
        for j in range(len(self.plans)):
            seen = ~np.isnan(correct[:, j])
            Hj, y, wj = (H, correct[:, j], w) if seen.all() else (H[seen], correct[seen, j], w[seen])
            pos = int(y.sum())
            if pos == 0 or pos == len(y):
                icpt[j] = _logit((pos + 0.5) / (len(y) + 1))
                self.chosen_C.append(None)
                continue
            k = min(3, pos, len(y) - pos)
            C = cv_choose_C(Hj, y, wj, self.config.Cs, k, self.config.seed) if k >= 2 else min(self.config.Cs)
            beta = fit_logreg(Hj, y, wj, C)
            coef[j], icpt[j] = beta[1:], beta[0]
            self.chosen_C.append(float(C))
        tcoef = np.zeros_like(coef)
        ticpt = np.zeros(len(self.plans))
        if out_tokens is not None:
            T = np.log1p(np.asarray(out_tokens, np.float64).reshape(len(X), len(self.plans)))
            for j in range(len(self.plans)):
                seen = ~np.isnan(T[:, j])
                if not seen.any():
                    continue  # no observed tokens: the head predicts 0
                beta = (fit_ridge(H, T[:, j], w, self.config.ridge_alpha) if seen.all()
                        else fit_ridge(H[seen], T[seen, j], w[seen], self.config.ridge_alpha))
                tcoef[j], ticpt[j] = beta[1:], beta[0]
        self.arrays.update({"coef": coef, "icpt": icpt, "tcoef": tcoef, "ticpt": ticpt,
                            "n_context": np.array([0 if context is None else np.asarray(context).shape[1]])})
        return self

    def fit_basis(self, X: np.ndarray) -> "Probe":
        """Column selection, standardisation and whitened PCA (randomized SVD when wide)."""
        X = np.asarray(X, np.float64)
        cols = self.select.columns(self.feature_spec, X.shape[1])
        Xs = X[:, cols]
        mu, sd = Xs.mean(0), Xs.std(0) + 1e-6
        Z = (Xs - mu) / sd
        k = max(1, min(self.config.pca_dim, Z.shape[0] - 1, Z.shape[1]))
        if min(Z.shape) > 3 * k:
            from sklearn.utils.extmath import randomized_svd

            _, s, vt = randomized_svd(Z, k, random_state=self.config.seed)
        else:
            _, s, vt = np.linalg.svd(Z, full_matrices=False)
            s, vt = s[:k], vt[:k]
        comps = vt / (np.maximum(s, 1e-8)[:, None] / np.sqrt(max(1, len(Z) - 1)))  # whitened projection [k, cols]
        self.arrays = {"cols": cols, "mu": mu, "sd": sd, "comps": comps, "n_context": np.array([0])}
        return self

    @staticmethod
    def _with_context(H: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        return H if context is None else np.hstack([H, np.asarray(context, np.float64).reshape(len(H), -1)])

    # ---- inference -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if "comps" not in self.arrays:
            raise ProbeError("probe is not fitted: call fit() or Probe.load()")

    def project(self, X: np.ndarray) -> np.ndarray:
        """Whitened PCA coordinates [n, k] (also the space task embeddings live in)."""
        self._check_fitted()
        X = np.atleast_2d(np.asarray(X, np.float64))
        a = self.arrays
        if X.shape[1] <= int(a["cols"].max()):
            raise ProbeError(f"features have {X.shape[1]} columns; this probe reads spec {self.feature_spec}")
        return ((X[:, a["cols"]] - a["mu"]) / a["sd"]) @ a["comps"].T

    def logits(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        H = self._with_context(self.project(X), context)
        n_ctx = int(self.arrays["n_context"][0])
        if H.shape[1] != self.arrays["coef"].shape[1]:
            raise ProbeError(f"probe was fitted with {n_ctx} context columns; got {H.shape[1] - self.arrays['comps'].shape[0]}")
        return H @ self.arrays["coef"].T + self.arrays["icpt"]  # [n, plans]

    def predict_proba(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        return _sigmoid(self.logits(X, context))

    def predict_tokens(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        H = self._with_context(self.project(X), context)
        return np.expm1(np.clip(H @ self.arrays["tcoef"].T + self.arrays["ticpt"], 0, 20))

    # ---- model identity ------------------------------------------------------------------
    def check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ProbeModelMismatch(
                f"this probe reads hidden states of model {self.model_id!r} but the features come from {model_id!r}; "
                f"retrain the probe on {model_id!r} features or serve {self.model_id!r}"
            )

    def check_source(self, source) -> None:
        self.check_model(source.model_id)
        if dict(source.spec) != self.feature_spec:
            raise ProbeError(f"feature spec differs: probe {self.feature_spec}, source {dict(source.spec)}")

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path/probe.json` + `path/probe.npz` (a directory)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "plans": self.plans, "model_id": self.model_id, "feature_spec": self.feature_spec,
                "select": asdict(self.select), "config": asdict(self.config)}
        (path / "probe.json").write_text(json.dumps(meta, indent=1))
        np.savez(path / "probe.npz", **self.arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None) -> "Probe":
        """Load a saved probe; with `model_id`, raise ProbeModelMismatch unless it matches."""
        path = Path(path)
        try:
            meta = json.loads((path / "probe.json").read_text())
        except FileNotFoundError as e:
            raise ProbeError(f"no probe at {path} (expected probe.json and probe.npz)") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ProbeError(f"probe format {meta.get('format_version')} at {path}; this code reads {FORMAT_VERSION}")
        probe = cls(meta["plans"], meta["feature_spec"], meta["model_id"], FeatureSelect(**meta["select"]), ProbeConfig(**meta["config"]))
        if model_id is not None:
            probe.check_model(model_id)
        with np.load(path / "probe.npz", allow_pickle=False) as z:
            probe.arrays = {k: z[k] for k in z.files}
        return probe


def fit_logreg(H: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, beta0: np.ndarray | None = None, iters: int = 50) -> np.ndarray:
    """L2 logistic regression by damped Newton: minimise C * sum_i w_i logloss_i + |coef|^2 / 2 (the
    intercept unpenalised, as in scikit-learn). Returns [intercept, coef...]."""
    A = np.hstack([np.ones((len(H), 1)), H])
    reg = np.full(A.shape[1], 1.0 / C)
    reg[0] = 0.0
    beta = np.zeros(A.shape[1]) if beta0 is None else beta0.copy()

    def obj(b):
        z = A @ b
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + 0.5 * np.sum(reg * b * b))

    f = obj(beta)
    for _ in range(iters):
        p = _sigmoid(A @ beta)
        grad = A.T @ (w * (p - y)) + reg * beta
        hess = (A * (w * p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-10)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and obj(beta - t * step) > f + 1e-12:
            t *= 0.5
        beta = beta - t * step
        f_new = obj(beta)
        if abs(f - f_new) < 1e-9 * max(1.0, abs(f)):
            break
        f = f_new
    return beta


def cv_choose_C(H, y, w, Cs, k: int, seed: int = 0) -> float:
    """The C of `Cs` with the least held-out log-loss in stratified k-fold CV on these (training) rows."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(len(idx)) % k
    loss = np.zeros(len(Cs))
    for f in range(k):
        tr, te = fold != f, fold == f
        beta = None
        for i, C in enumerate(sorted(Cs)):  # warm start along the path
            beta = fit_logreg(H[tr], y[tr], w[tr], C, beta)
            z = beta[0] + H[te] @ beta[1:]
            loss[i] += float(np.sum(w[te] * (np.logaddexp(0, z) - y[te] * z)))
    return float(sorted(Cs)[int(np.argmin(loss))])


def fit_ridge(H: np.ndarray, t: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """Weighted ridge regression (intercept unpenalised). Returns [intercept, coef...]."""
    A = np.hstack([np.ones((len(H), 1)), H])
    reg = np.full(A.shape[1], float(alpha))
    reg[0] = 0.0
    return np.linalg.solve((A * w[:, None]).T @ A + np.diag(reg + 1e-10), (A * w[:, None]).T @ t)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
