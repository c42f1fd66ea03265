"""Policy and dial: validation, monotonicity, hard limits, online update, persistence."""
import math

import numpy as np
import pytest

from probes.probe import ProbeConfig
from router.policy import DialConfig, DialError, NoFeasiblePlan, Policy, PolicyConfig, Prediction, SystemPrice, lam, parse_dial_model, validate_dial

SPEC = {"source": "sentence_embedding", "model_id": "fake", "pooling": ["mean"]}
PRICES = {"small": SystemPrice(1.0, 1.0), "mid": SystemPrice(5.0, 5.0), "large": SystemPrice(30.0, 30.0)}


def _fit(n=200, seed=0, tasks=None, config=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = np.stack([X[:, 0] > 0.8, X[:, 0] > 0.0, X[:, 0] > -1.0], 1).astype(float)
    tok = np.full((n, 3), 100.0)
    pol = Policy.fit(X, y, tok, tasks, list(PRICES), PRICES, SPEC, "fake", probe_config=ProbeConfig(Cs=[0.3]), config=config or PolicyConfig())
    return pol, X, y


@pytest.mark.parametrize("bad", [-0.1, 1.01, "x", None, float("nan")])
def test_dial_validation(bad):
    with pytest.raises(DialError) as e:
        validate_dial(bad)
    assert "[0, 1]" in str(e.value)


def test_lambda_mapping_monotone_and_ends():
    assert lam(0.0) == math.inf and lam(1.0) == 0.0
    vals = [lam(d) for d in np.linspace(0.01, 0.99, 50)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    with pytest.raises(DialError):
        DialConfig(lam_min=10, lam_max=1)


def test_parse_dial_model():
    assert parse_dial_model("thinkroute-dial-0.3") == 0.3
    assert parse_dial_model("gpt-4") is None
    with pytest.raises(DialError):
        parse_dial_model("thinkroute-dial-1.5")


def test_higher_dial_never_lowers_chosen_quality():
    pol, X, _ = _fit()
    for i in range(40):
        preds = pol.predict(X[i], prompt_tokens=50)
        ps = [preds[pol.choose(preds, d).plan].p_correct for d in np.linspace(0, 1, 41)]
        assert all(b >= a - 1e-12 for a, b in zip(ps, ps[1:])), ps


def test_dial_ends():
    pol, X, _ = _fit()
    preds = pol.predict(X[0], prompt_tokens=50)
    assert pol.choose(preds, 0.0).plan == "small"
    best = max(preds, key=lambda p: preds[p].p_correct)
    assert pol.choose(preds, 1.0).plan == best


def test_hard_limits_and_ranking():
    preds = {"a": Prediction(0.9, 1.0, 5000), "b": Prediction(0.6, 0.1, 100), "c": Prediction(0.5, 0.01, 50)}
    pol, _, _ = _fit()
    d = pol.choose(preds, 1.0, max_cost=0.5)
    assert d.plan == "b" and [c.plan for c in d.ranked] == ["b", "c"]
    assert d.rejected[0].plan == "a" and "max_cost" in d.rejected[0].reason
    assert pol.choose(preds, 1.0, max_latency_ms=60).plan == "c"
    with pytest.raises(NoFeasiblePlan) as e:
        pol.choose(preds, 0.5, max_cost=0.001)
    assert "max_cost" in str(e.value)


def test_online_update_moves_policy():
    pol, X, _ = _fit()
    x = X[0]
    before = pol.predict(x, 50)["large"].p_correct
    for _ in range(60):
        pol.update(x, "large", correct=False, cost=0.003, latency_ms=900, prompt_tokens=50)
    after = pol.predict(x, 50)["large"].p_correct
    assert after < before - 0.2
    # other plans are untouched
    assert abs(pol.predict(x, 50)["small"].p_correct - _fit()[0].predict(x, 50)["small"].p_correct) < 1e-9


def test_update_changes_choice_at_fixed_dial():
    pol, X, _ = _fit()
    x = X[np.argmax(X[:, 0])]  # easy query: every plan likely right
    preds = pol.predict(x, 50)
    first = pol.choose(preds, 0.5).plan
    for _ in range(80):
        pol.update(x, first, correct=False)
    assert pol.choose(pol.predict(x, 50), 0.5).plan != first


def test_exploration_bounded_by_config():
    with pytest.raises(ValueError):
        PolicyConfig(explore_rate=0.9)
    pol, X, _ = _fit(config=PolicyConfig(explore_rate=0.2, seed=1))
    preds = pol.predict(X[0], 50)
    explored = sum(pol.choose(preds, 0.5).explored for _ in range(2000))
    assert 300 < explored < 500


def test_task_embedding_and_fork_and_save(tmp_path):
    tasks = np.array(["t1", "t2", "t3", "t4"] * 50)
    pol, X, y = _fit(tasks=tasks, config=PolicyConfig(task_context_dim=2))
    assert pol.task_embedding("t1").shape == (2,) and np.allclose(pol.task_embedding("unseen"), 0)
    f = pol.fork()
    f.adapt(X[:20], y[:20], "new")
    assert ("new", "small") in f._corr and ("new", "small") not in pol._corr
    f.save(tmp_path / "pol")
    g = Policy.load(tmp_path / "pol", model_id="fake")
    a = f.predict_arrays(X[:5], [50] * 5, ["new"] * 5)[0]
    b = g.predict_arrays(X[:5], [50] * 5, ["new"] * 5)[0]
    np.testing.assert_allclose(a, b)
