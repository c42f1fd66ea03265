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


# ---- servability: one definition of hidden-state features, and the artifact check at start -------
def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_hidden_features_layout_and_batching_match_one_prompt_at_a_time():
    """The worker runs prompts one by one; offline extraction pads batches: same numbers, same columns."""
    import torch

    from workers.hf_engine import hidden_features, truncate_prompt

    model = _tiny_llama()
    prompts = [[1, 5, 7, 9], [2, 3], [4, 4, 4, 4, 4, 4, 8]]
    with torch.inference_mode():
        states, unc = hidden_features(model, prompts, [1, 3], ["last", "mean"], True, 3)
        assert states.shape == (3, 4, 16) and unc.shape == (3, 3)
        for i, p in enumerate(prompts):
            s1, u1 = hidden_features(model, [p], [1, 3], ["last_token", "mean"], True, 3)
            np.testing.assert_allclose(states[i], s1[0], atol=1e-5)
            np.testing.assert_allclose(unc[i], u1[0], atol=1e-5)
        hs = model.model(input_ids=torch.tensor([prompts[2]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(states[2, 0], hs[1][0, -1].numpy(), atol=1e-5)  # layer 1, last token
    np.testing.assert_allclose(states[2, 3], hs[3][0].mean(0).numpy(), atol=1e-5)  # layer 3 (final, normed), mean
    assert unc[1, 2] == pytest.approx(np.log(2)) and 0 < unc[0, 1] <= 1
    assert truncate_prompt([1, 2, 3, 4], 2) == [3, 4] and truncate_prompt([1, 2], 0) == [1, 2]


def test_feature_request_covers_the_spec_in_one_call():
    from probes.features import feature_request, hidden_state_spec

    spec = hidden_state_spec("m1", [2, 4], ["last", "mean"], 32, False)
    assert feature_request(spec) == {"layers": [2, 4], "pooling": ["last", "mean"], "uncertainty": False, "max_tokens": 32}
    with pytest.raises(ValueError, match="not served"):
        feature_request({"source": "sentence_embedding", "model_id": "all-minilm-l6-v2"})


def _artifact(tmp_path, spec, model_id="m1", plans=("a", "b")):
    from router.policy import Policy, SystemPrice

    X, y, tok = _data()
    y, tok = np.resize(y.T, (len(plans), len(X))).T, np.resize(tok.T, (len(plans), len(X))).T
    pol = Policy.fit(X, y, tok, None, list(plans), {p: SystemPrice(1, 1) for p in plans}, spec, model_id,
                     probe_config=CFG)
    return str(pol.save(tmp_path / "art"))


def test_servable_artifact_is_refused_on_any_difference(tmp_path):
    from router.errors import InvalidRoute
    from router.policy.planning import load_servable_artifact

    path = _artifact(tmp_path, SPEC)
    pol, req = load_servable_artifact(path, ["a", "b"], None, "m1")
    assert req == {"layers": [4, -1], "pooling": ["last", "mean"], "uncertainty": True, "max_tokens": 0}
    with pytest.raises(InvalidRoute, match="serves 'm2'"):
        load_servable_artifact(path, ["a", "b"], None, "m2")
    with pytest.raises(InvalidRoute, match=r"candidates without a prediction: \['c'\]"):
        load_servable_artifact(path, ["a", "b", "c"], None, "m1")
    with pytest.raises(InvalidRoute, match=r"policy.layers \[-1\] differ"):
        load_servable_artifact(path, ["a", "b"], [-1], "m1")
    other = _artifact(tmp_path / "x", {"source": "sentence_embedding", "model_id": "all-minilm-l6-v2"}, "all-minilm-l6-v2")
    with pytest.raises(InvalidRoute, match="not served by the worker HiddenState RPC"):
        load_servable_artifact(other, ["a", "b"], None, "all-minilm-l6-v2")


def test_knn_router_same_contract_as_policy():
    from router.policy.evaluate import KNNRouter
    from router.policy import PolicyConfig, SystemPrice

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = np.stack([(X[:, 0] > 0), np.ones(60)], 1).astype(float)
    knn = KNNRouter(X, y, np.full((60, 2), 10.0), ["a", "b"], {"a": SystemPrice(1, 1), "b": SystemPrice(5, 5)}, 5, PolicyConfig())
    P, C = knn.predict_arrays(X, np.full(60, 20.0), exclude_self=True)
    assert P.shape == (60, 2) and C.shape == (60, 2) and ((P[:, 0] > 0.5) == (X[:, 0] > 0)).mean() > 0.8
    np.testing.assert_allclose(C[:, 1], 5 * C[:, 0])


def test_planning_policy_serves_the_artifact_spec_in_one_call_and_checks_the_served_model(tmp_path):
    """The live path asks the drafter pool once per query for exactly the artifact's columns and refuses a
    worker that serves another model (Info's model_id, not the pool name). The pool is a test double."""
    import asyncio
    import time

    from router.config import load_config
    from router.errors import InvalidRoute
    from router.policy.planning import PlanningPolicy
    from router.types import RouteQuery

    plans = list(load_config().policy.candidates)
    path = _artifact(tmp_path, {**SPEC, "model_id": "smollm2-135m"}, "smollm2-135m", plans)
    live = PlanningPolicy(load_config(overrides={"policy.artifact": path}))
    assert live.request == {"layers": [4, -1], "pooling": ["last", "mean"], "uncertainty": True, "max_tokens": 0}

    class Pool:
        def __init__(self, served):
            self.served, self.calls = served, []

        async def served_model_id(self, model, **kw):
            return self.served

        async def hidden_features(self, model, prompts, request, *, deadline):
            self.calls.append((model, request))
            return [np.zeros(DIM, np.float32)], self.served, type("R", (), {"latency_ms": 1.0, "replica": "r0"})()

    good = Pool("smollm2-135m")
    plan = asyncio.run(live.plan(RouteQuery(query="What is 2+2?", dial=1.0), 1.0, None, good))
    assert good.calls == [("smollm2-135m", live.request)] and plan.candidates["ranked"]
    with pytest.raises(InvalidRoute, match="serves 'gemma3-270m'"):
        asyncio.run(PlanningPolicy(load_config(overrides={"policy.artifact": path})).features(Pool("gemma3-270m"), "q",
                                                                                          time.monotonic() + 30))
    with pytest.raises(InvalidRoute, match="not one of|predicts plans"):
        PlanningPolicy(load_config(overrides={"policy.artifact": _artifact(tmp_path / "y", {**SPEC, "model_id": "smollm2-135m"}, "smollm2-135m", plans[:2])}))
