"""The routing harness can fail: on outcomes with no signal in the features a noise-feature policy does
not beat the feature-free base-rate policy beyond its bootstrap interval; a planted signal is found;
operating points never depend on evaluation labels; the oracle is a ceiling; decisions cover every row.
Synthetic outcome sets only (a few seconds)."""
import io
import json

import numpy as np
import pytest

from router.policy.costs import SystemPrice
from router.policy.evaluate import (FoldContext, MethodSpec, Outcomes, RoutingEvalConfig, evaluate, make_folds, oracle_decisions,
                                    run_method)

PRICES = {"small": SystemPrice(1.0, 1.0), "mid": SystemPrice(4.0, 4.0), "large": SystemPrice(20.0, 20.0)}
SPEC = {"source": "synthetic", "model_id": "synthetic"}


def outcome_set(n: int, seed: int, signal: bool, dim: int = 16, groups: int = 0):
    """Three systems of rising cost and accuracy. With `signal`, a row's difficulty (which decides
    whether the cheap systems succeed) is written in feature 0; without it, features are pure noise."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    X = rng.normal(size=(n, dim)).astype(np.float32)
    if signal:
        X[:, 0] = np.where(hard, 1.5, -1.5) + 0.3 * rng.normal(size=n)
        p = np.stack([np.where(hard, 0.1, 0.9), np.where(hard, 0.4, 0.92), np.full(n, 0.9)], 1)
    else:
        p = np.tile([0.5, 0.62, 0.8], (n, 1))
    correct = (rng.random((n, 3)) < p).astype(float)
    prompt = rng.integers(20, 200, n).astype(float)
    out = np.tile([30.0, 30.0, 30.0], (n, 1))
    cost = np.stack([PRICES[s].cost(prompt, out[:, j]) for j, s in enumerate(PRICES)], 1)
    g = None if not groups else np.array([f"g{i % groups}" for i in range(n)], dtype=object)
    texts = [f"row {seed} {i}" for i in range(n)]
    return Outcomes(texts, g, list(PRICES), correct, out, prompt, cost), X


def cfg(**kw):
    return RoutingEvalConfig(name="synthetic", data="-", systems=PRICES, probe={"pca_dim": 8}, policy={"task_context_dim": 0},
                             baseline_features={}, knn={}, cv=5, **kw)


def run(data, X, methods=None, decisions=None, c=None, folds=None):
    c = c or cfg()
    folds = folds or make_folds(len(data.texts), c.cv, data.groups, 0)
    return evaluate(c, data, {"probe": X}, {"probe": (SPEC, "synthetic")}, folds, progress=False, methods=methods, bootstrap=200,
                    decisions=decisions)


@pytest.mark.parametrize("seed", [1, 2])
def test_noise_features_do_not_beat_base_rate_beyond_the_interval(seed):
    data, X = outcome_set(800, seed, signal=False)
    res = run(data, X, methods=["probe", "base-rate", "length"])  # `probe` here reads noise only
    comp = res["comparisons"]["probe"]["base-rate"]
    assert comp["ci95"][0] <= 0.0, comp  # a harness that rewards noise fails here
    assert comp["verdict"] != "wins"
    assert comp["ci95"][0] < comp["mean_diff"] < comp["ci95"][1]


def test_planted_signal_is_found_against_every_baseline():
    data, X = outcome_set(600, 3, signal=True)
    res = run(data, X, methods=["probe", "noise", "base-rate", "length", "always-cheapest", "always-best", "single-envelope", "oracle"])
    comps = res["comparisons"]["probe"]
    assert set(comps) == {"noise", "base-rate", "length", "always-cheapest", "always-best", "single-envelope"}
    sb = res["strongest_baseline"]
    assert comps[sb]["verdict"] == "wins" and comps[sb]["ci95"][0] > 0.01, comps[sb]
    assert res["methods"]["oracle"]["mean"]["area"] >= res["methods"]["probe"]["mean"]["area"]


def test_operating_points_never_read_evaluation_labels():
    data, X = outcome_set(400, 4, signal=True)
    c = cfg()
    train, test = make_folds(len(data.texts), 5, None, 0)[0]
    flipped = Outcomes(data.texts, None, data.systems, data.correct.copy(), data.out_tokens, data.prompt_tokens, data.cost)
    flipped.correct[test] = 1.0 - flipped.correct[test]
    for m in [MethodSpec("probe", "policy", "probe"), MethodSpec("base-rate", "policy", "none"), MethodSpec("best", "best")]:
        runs = []
        for d in (data, flipped):
            feats = {"probe": X, "none": np.zeros((len(X), 1), np.float32)}
            specs = {"probe": (SPEC, "s"), "none": ({"source": "none"}, "none")}
            ctx = FoldContext(c, d, train, test, feats, specs, 0, int(d.correct[train].mean(0).argmax()))
            runs.append(run_method(ctx, m))
        assert runs[0].dials == runs[1].dials
        for a, b in zip(runs[0].decisions, runs[1].decisions):
            np.testing.assert_array_equal(a, b)


def test_oracle_is_a_ceiling_at_every_budget():
    data, _ = outcome_set(300, 5, signal=False)
    r = np.arange(300)
    for budget in np.linspace(data.cost.min(1).mean(), data.cost.max(1).mean(), 7):
        idx = oracle_decisions(data.cost, data.correct, budget)
        assert data.cost[r, idx].mean() <= budget * (1 + 1e-9)
        # no fixed system (nor the cheapest-per-row choice) within the budget beats it
        for j in range(3):
            if data.cost[:, j].mean() <= budget:
                assert data.correct[r, idx].mean() >= data.correct[:, j].mean()


def test_no_method_gets_free_points():
    data, X = outcome_set(600, 6, signal=False)
    res = run(data, X, methods=["always-best", "always-cheapest", "base-rate"])
    assert len(res["methods"]["always-best"]["points"]) == 1  # a single point: its own curve only
    assert res["methods"]["always-best"]["mean"]["area"] < res["methods"]["always-cheapest"]["mean"]["area"]
    assert len(res["methods"]["base-rate"]["points"]) == 11


def test_decisions_cover_every_row_method_and_point():
    data, X = outcome_set(150, 7, signal=True, groups=6)
    buf = io.StringIO()
    res = run(data, X, methods=["probe", "base-rate", "single-envelope"], decisions=buf)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert set(lines[0]) == {"method", "point", "plan", "text_sha256"}
    per = {}
    for x in lines:
        per.setdefault((x["method"], x["point"]), set()).add(x["text_sha256"])
    assert {k[0] for k in per} == {"probe", "base-rate", "single-envelope"}
    assert all(len(v) == 150 for v in per.values())  # every evaluation row, once per (method, point)
    assert len(per) == 11 + 11 + 3
    assert res["protocol"]["bootstrap"].endswith("paired across methods")
