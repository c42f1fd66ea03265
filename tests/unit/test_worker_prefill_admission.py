"""Prefill-only RPCs (HiddenState, Score) have their own admission class on the worker: with every
generation slot taken and the generation queue full, they are still served at once (fake engine)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from thinkroute.v1 import worker_pb2 as pb

from workers.config import EngineConfig
from workers.engine import Engine
from workers.server import WorkerServicer
from workers.types import EngineInfo, GenerateChunk, GenerateFinal, FinishReason, HiddenStateResult, ScoreResult


class BlockingEngine(Engine):
    max_concurrency = 1

    def __init__(self) -> None:
        self.info = EngineInfo(model_id="fake", tokenizer_id="t", context_length=512, backend="fake", device="cpu",
                               dtype="float32", has_chat_template=False, vocab_size=100, hidden_size=4, num_layers=2)
        self.release = asyncio.Event()
        self.generating = asyncio.Event()

    async def start(self, progress=None) -> None:  # pragma: no cover - not used
        pass

    async def generate(self, request_id, prompt_ids, sampling):
        self.generating.set()
        await self.release.wait()
        yield GenerateChunk(text="x", token_ids=[1], final=GenerateFinal(
            finish_reason=FinishReason.LENGTH, prompt_tokens=len(prompt_ids), generated_tokens=1))

    async def score(self, prompt_ids, continuation_ids, top_k, candidate_ids, cache_salt=""):
        return ScoreResult(continuation=[], top_next=[], candidates=[], prompt_tokens=len(prompt_ids))

    async def hidden_states(self, prompts, layers, pooling, uncertainty=False, max_tokens=0):
        return [HiddenStateResult(states=np.zeros((1, 4), np.float32), layers=[2], prompt_tokens=len(p)) for p in prompts]


class FakeRenderer:
    vocab_size = 100
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2, 3])

    def render(self, prompt, template_kwargs=None):
        return SimpleNamespace(token_ids=[1, 2, 3], text="abc")


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code, details):
        raise Aborted(f"{code.name}: {details}")


class FakeHealth:
    def set(self, name, status):
        return None


def test_prefill_rpcs_do_not_wait_for_or_take_generation_slots():
    async def run():
        engine = BlockingEngine()
        cfg = EngineConfig(model="fake", backend="hf", max_queue=0, prefill_max_concurrency=2, prefill_max_queue=0)
        s = WorkerServicer(engine, FakeRenderer(), cfg, "r0", FakeHealth())
        gen_req = pb.GenerateRequest(prompt=pb.Prompt(text="hi"), sampling=pb.SamplingParams(max_tokens=1))
        gen = asyncio.ensure_future(_drain(s.Generate(gen_req, Context())))
        await asyncio.wait_for(engine.generating.wait(), 5)
        assert s.admission.running == 1
        # Generation is full (1 running, queue 0): another Generate is refused ...
        with pytest.raises(Aborted, match="RESOURCE_EXHAUSTED"):
            await _drain(s.Generate(gen_req, Context()))
        # ... while HiddenState and Score are served at once, beside it.
        hs = await asyncio.wait_for(s.HiddenState(pb.HiddenStateRequest(prompts=[pb.Prompt(text="hi")], layers=[2]),
                                                  Context()), 2)
        sc = await asyncio.wait_for(s.Score(pb.ScoreRequest(prompt=pb.Prompt(text="hi"), top_k=1), Context()), 2)
        assert hs.results[0].prompt_tokens == 3 and sc.prompt_tokens == 3
        assert s.admission.running == 1 and s.prefill_admission.running == 0
        engine.release.set()
        await asyncio.wait_for(gen, 5)

    asyncio.run(run())


async def _drain(agen):
    return [m async for m in agen]
