"""HiddenState's truncated, micro-batched forward (workers/hidden.py) against the one definition of the
features (workers.hf_engine.hidden_features on the full transformers model), on both embedded models.

In-process, no worker: loads the weights once per model. Marked slow: about 3.7 minutes on the shared
2-core machine (one full forward per prompt for the reference); tests/integration/test_vllm_engine.py
checks the same path on a live engine in the default run. Tolerance, float32: every element within
1e-4 x max(1, |reference|) (measured: at most 1.3e-5 relative, the residual stream's largest entries
being ~780 in SmolLM2); the truncated model holds only the layers read.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

torch = pytest.importorskip("torch")

from workers.hf_engine import hidden_features  # noqa: E402
from workers.hidden import HiddenStateBatcher, TruncatedModel  # noqa: E402

REL_TOL = 1e-4
PROMPTS = ["What is 17 * 3?", "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether?", "Hi"]
POOLS = ("last_token", "mean")


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    return bool((np.abs(got - want) <= REL_TOL * np.maximum(1.0, np.abs(want))).all())


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def ref(request):
    """(model dir, num layers, hidden size, prompt ids, reference states [P, (n+1)*2, H] of every layer x
    pooling, reference uncertainty [P, 3], full model parameter count); one full forward per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.convert import materialize
    from workers.models import resolve_model

    spec = resolve_model(request.param)
    path = materialize(spec)
    tok = AutoTokenizer.from_pretrained(path)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n = full.config.num_hidden_layers
    ids = []
    for t in PROMPTS:
        x = tok.encode(t, add_special_tokens=False)
        if spec.prepend_bos and x[0] != tok.bos_token_id:
            x = [tok.bos_token_id, *x]
        ids.append(x)
    with torch.inference_mode():
        rows = [hidden_features(full, [x], list(range(n + 1)), POOLS, True, n) for x in ids]
    states = np.stack([r[0][0] for r in rows])
    unc = np.stack([r[1][0] for r in rows])
    return path, n, full.config.hidden_size, ids, states, unc, sum(p.numel() for p in full.parameters())


def _want(states: np.ndarray, layers: list[int], pools) -> np.ndarray:
    return states[:, [2 * layer + POOLS.index(p) for layer in layers for p in pools]]


@pytest.mark.parametrize("layers,pools,uncertainty", [([2, 4, 8], POOLS, False), ([-1, 3], ("mean",), True)])
def test_truncated_forward_equals_full(ref, layers, pools, uncertainty):
    path, n, hidden, ids, states, unc, full_params = ref
    resolved = [x if x >= 0 else n + 1 + x for x in layers]
    model = TruncatedModel(path, n)
    got, got_unc = model.features(ids, resolved, pools, uncertainty)  # one right-padded batch
    assert got.shape == (len(ids), len(resolved) * len(pools), hidden)
    assert _close(got, _want(states, resolved, pools)), float(np.abs(got - _want(states, resolved, pools)).max())
    if uncertainty:
        assert _close(got_unc, unc) and model.loaded.head and len(model.base.layers) == n
        # The same loaded model serves a shallower call by running only its first layers.
        got2, _ = model.features(ids, [1], ("last_token",), False)
        assert _close(got2, _want(states, [1], ("last_token",)))
    else:
        # Only what is read is loaded: the embeddings and the first max(layer) decoder layers, no LM head.
        assert len(model.base.layers) == max(resolved) and model.lm_head is None
        assert model.parameters() < full_params
        # A deeper request grows the model; it stays exact.
        got3, _ = model.features(ids[:1], [max(resolved) + 2], ("mean",), False)
        assert len(model.base.layers) == max(resolved) + 2
        assert _close(got3, _want(states[:1], [max(resolved) + 2], ("mean",)))


def test_batcher_shares_forwards_and_matches(ref):
    """Concurrent calls with different layers and poolings: one batch, each call gets its own columns."""
    path, n, hidden, ids, states, unc, _ = ref
    calls = [([2, 4, 8], POOLS), ([3], ("mean",)), ([8, 2], ("last_token",)), ([0], ("last_token",))]

    async def run():
        b = HiddenStateBatcher(TruncatedModel(path, n), window_ms=50.0)
        await b.warm([8], False)
        try:
            res = await asyncio.gather(*(b.submit([ids[i % 3], ids[(i + 1) % 3]], layers, pools, False)
                                         for i, (layers, pools) in enumerate(calls)))
            return res, b.forwards, b.batches
        finally:
            await b.close()

    results, forwards, batches = asyncio.run(run())
    assert batches == 1 and forwards == 1, (batches, forwards)
    for i, ((layers, pools), res) in enumerate(zip(calls, results)):
        for j, r in enumerate(res):
            k = (i + j) % 3
            assert r.layers == layers and r.prompt_tokens == len(ids[k]) and r.uncertainty is None
            assert r.states.shape == (len(layers) * len(pools), hidden)
            assert _close(r.states, _want(states[k:k + 1], layers, pools)[0])
