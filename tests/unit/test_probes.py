"""Probe: round trip, model-id refusal, feature selection (synthetic arrays, no model loading)."""
import numpy as np
import pytest

from probes.probe import FeatureSelect, Probe, ProbeConfig, ProbeError, ProbeModelMismatch

CFG = ProbeConfig(Cs=[0.1, 1.0])

SPEC = {"source": "hidden_states", "model_id": "m1", "layers": [4, -1], "pooling": ["last", "mean"], "max_tokens": None, "uncertainty": True, "prompt": "text"}
H = 8
DIM = 2 * 2 * H + 3


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, DIM))
    y = np.stack([(X[:, 0] > 0), (X[:, 1] + 0.5 * rng.normal(size=n) > 0)], 1).astype(float)
    tok = np.stack([np.full(n, 10.0), np.exp(3 + X[:, 2])], 1)
    return X, y, tok


def test_round_trip_same_predictions(tmp_path):
    X, y, tok = _data()
    p = Probe(["a", "b"], SPEC, "m1", config=CFG).fit(X, y, tok)
    p.save(tmp_path / "probe")
    q = Probe.load(tmp_path / "probe", model_id="m1")
    np.testing.assert_allclose(p.predict_proba(X), q.predict_proba(X))
    np.testing.assert_allclose(p.predict_tokens(X), q.predict_tokens(X))
    assert q.plans == ["a", "b"] and q.feature_spec == SPEC


def test_probe_learns_signal():
    X, y, tok = _data(400)
    p = Probe(["a", "b"], SPEC, "m1", config=CFG).fit(X[:300], y[:300], tok[:300])
    acc = ((p.predict_proba(X[300:]) > 0.5) == y[300:]).mean(0)
    assert acc[0] > 0.85 and acc[1] > 0.7


def test_refuses_other_model(tmp_path):
    X, y, tok = _data()
    Probe(["a", "b"], SPEC, "m1", config=CFG).fit(X, y, tok).save(tmp_path / "p")
    with pytest.raises(ProbeModelMismatch) as e:
        Probe.load(tmp_path / "p", model_id="other-model")
    assert "m1" in str(e.value) and "other-model" in str(e.value)


def test_check_source_refuses_other_model():
    X, y, tok = _data()
    p = Probe(["a", "b"], SPEC, "m1", config=CFG).fit(X, y, tok)

    class Src:
        model_id = "m2"
        spec = SPEC

    with pytest.raises(ProbeModelMismatch):
        p.check_source(Src())


def test_feature_select_columns():
    cols = FeatureSelect(layers=[-1], pooling=["last"], uncertainty=True).columns(SPEC, DIM)
    # layout: [L4 last, L4 mean, L-1 last, L-1 mean, 3 uncertainty]
    assert cols.tolist() == list(range(2 * H, 3 * H)) + [DIM - 3, DIM - 2, DIM - 1]
    with pytest.raises(ProbeError):
        FeatureSelect(layers=[7]).columns(SPEC, DIM)


def test_single_class_plan_predicts_base_rate():
    X, y, tok = _data()
    y[:, 1] = 1.0
    p = Probe(["a", "b"], SPEC, "m1", config=CFG).fit(X, y, tok)
    assert (p.predict_proba(X)[:, 1] > 0.95).all()


def test_unfitted_probe_errors():
    with pytest.raises(ProbeError):
        Probe(["a"], SPEC, "m1").predict_proba(np.zeros((1, DIM)))
