"""The routed request's id reaches the workers: RouterCore binds it, the pool sends `<id>/<n>` per Generate."""
from __future__ import annotations

import asyncio
import time

from thinkroute.v1 import worker_pb2 as pb

from router import request_ids
from router.pool import WorkerPool
from workers.types import PromptInput, Sampling


class RecordingClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.request_ids: list[str] = []

    def generate(self, prompt, sampling, *, timeout, request_id=""):
        self.request_ids.append(request_id)

        async def stream():
            yield pb.GenerateResponse(text_delta="ok", token_ids=[1])
            yield pb.GenerateResponse(final=pb.GenerateFinal(usage=pb.Usage(prompt_tokens=1, generated_tokens=1)))

        class S:
            def __aiter__(self):
                return stream()

            def cancel(self):
                return True

        return S()


async def generate(pool: WorkerPool):
    return await pool.generate("m", PromptInput(text="q"), Sampling(max_tokens=4), deadline=time.monotonic() + 5)


async def test_each_model_call_of_a_routed_request_carries_its_id():
    pool = WorkerPool({"m": ["a"]})
    client = pool.replicas["m"][0].client = RecordingClient("a")
    with request_ids.bound("req-123"):
        await generate(pool)
        await asyncio.gather(generate(pool), generate(pool))  # concurrent steps of one request: distinct ids
    await generate(pool)  # outside a routed request: the worker makes its own
    assert sorted(client.request_ids[:3]) == ["req-123/1", "req-123/2", "req-123/3"]
    assert client.request_ids[3] == ""


def test_a_long_client_request_id_is_cut_to_fit_the_worker_bound():
    from workers.limits import MAX_REQUEST_ID_CHARS

    with request_ids.bound("x" * 500):
        cid = request_ids.call_id()
    assert len(cid) <= MAX_REQUEST_ID_CHARS and cid.endswith("/1")
    assert request_ids.current() == ""
