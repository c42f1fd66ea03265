"""The live planning policy with a probe artifact: features come from the drafter's HiddenState RPC on a
real worker, predictions from the saved probe, the choice from the dial.

The outcome log used to train the artifact is synthetic (a test double for *data*: the embedded models
have no outcome log). What is under test is the mechanics: hidden-state features over gRPC, artifact
save/load with its model id, per-query prediction, caching by query hash, and the choice."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
DATA = Path(os.environ.get("THINKROUTE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture(scope="module")
def artifact(worker_addresses, tmp_path_factory):
    from probes.features import WorkerHiddenStates
    from router.config import load_config
    from router.policy import Policy, SystemPrice

    cfg = load_config()
    plans = list(cfg.policy.candidates)
    rows = [json.loads(l) for l in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:60]]
    texts = [r["question"] for r in rows]
    src = WorkerHiddenStates(worker_addresses["smollm2-135m"][0], layers=(-1,), pooling=("last",))
    X = src.features(texts)
    # Synthetic outcomes: the "reasoner" succeeds where the first principal direction is high, the
    # others where it is low, so the probe has something to learn from the real hidden states.
    z = (X - X.mean(0)) @ np.linalg.svd(X - X.mean(0), full_matrices=False)[2][0]
    high = (z > np.median(z)).astype(float)
    correct = np.stack([high if p == "reasoner" else 1 - high for p in plans], axis=1)
    out_tokens = np.full_like(correct, 64.0)
    prices = {p: SystemPrice(price_in=0.1, price_out=0.1) for p in plans}
    policy = Policy.fit(X, correct, out_tokens, None, plans, prices, src.spec, src.model_id)
    path = policy.save(tmp_path_factory.mktemp("policy") / "artifact")
    return path, texts, policy


async def test_probe_artifact_plans_from_live_hidden_states(worker_addresses, artifact):
    from router.config import load_config
    from router.planner import DialStore, Planner
    from router.policy.planning import PlanningPolicy
    from router.pool import WorkerPool
    from router.types import RouteQuery

    path, texts, trained = artifact
    cfg = load_config(overrides={"policy.artifact": str(path)})
    live = PlanningPolicy(cfg)
    planner = Planner(cfg, DialStore(0.5), live)
    pool = WorkerPool(worker_addresses)
    try:
        first = await planner.plan(RouteQuery(query=texts[3], dial=1.0), pool)
        again = await planner.plan(RouteQuery(query=texts[3], dial=1.0), pool)
        feats, _ = await live.features(pool, texts[3], deadline=__import__("time").monotonic() + 30)
    finally:
        await pool.close()
    info = first.candidates["predictions"]
    assert info["source"].startswith("probe artifact") and info["cached"] is False and info["drafter"] == "smollm2-135m"
    assert again.candidates["predictions"]["cached"] is True
    expected = trained.predict(feats, max(1, len(texts[3]) // 4))
    best = max(expected, key=lambda p: (expected[p].p_correct, -expected[p].cost))
    assert first.candidates["ranked"][0]["plan"] == best
    assert first.candidates["ranked"][0]["p_correct"] == pytest.approx(expected[best].p_correct, abs=1e-6)


def test_artifact_refuses_another_models_hidden_states(artifact):
    from probes.probe import ProbeModelMismatch
    from router.policy import Policy

    path, _, _ = artifact
    with pytest.raises(ProbeModelMismatch, match="gemma3-270m"):
        Policy.load(path, model_id="gemma3-270m")


def test_offline_features_equal_the_live_rpc(worker_addresses):
    """Servability: the features route-eval trains on (LocalHiddenStates) are the numbers the worker's
    HiddenState RPC returns for the same spec, every pooling and the uncertainty columns in one call."""
    from probes.features import LocalHiddenStates, WorkerHiddenStates

    texts = ["Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
             "Which of the following is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"]
    kw = dict(layers=(2, -1), pooling=("last", "mean"), max_tokens=16, uncertainty=True)
    live = WorkerHiddenStates(worker_addresses["smollm2-135m"][0], progress=False, **kw)
    local = LocalHiddenStates("smollm2-135m", progress=False, **kw)
    try:
        assert live.spec == local.spec
        a, b = live.features(texts), local.features(texts)
    finally:
        live.close()
    assert a.shape == b.shape == (2, 2 * 2 * 576 + 3)
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
