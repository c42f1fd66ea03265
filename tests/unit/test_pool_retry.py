"""WorkerPool.generate's retry rule: a failed stream is retried on another replica only while nothing
it produced has reached the caller. With a delta callback, one delivered delta makes the call
final (a retry would repeat text the caller already has); without one, the partial text is
discarded and the retry's answer is the whole answer. Pure logic: hand-written fake clients."""
from __future__ import annotations

import time

import grpc
import pytest

from thinkroute.v1 import worker_pb2 as pb

from router.errors import DeadlineExceeded, ModelCallError
from router.pool import WorkerPool
from workers.types import PromptInput, Sampling

PROMPT = PromptInput(text="q")
SAMPLING = Sampling(max_tokens=8)


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}")


class FakeStream:
    """A server stream: `deltas` messages, then `fail_with` (an error) or a final message."""

    def __init__(self, deltas: list[str], fail_with: grpc.StatusCode | None, held_back: int = 0) -> None:
        self.deltas, self.fail_with, self.held_back = deltas, fail_with, held_back
        self.cancelled = False

    def __aiter__(self):
        return self._run()

    async def _run(self):
        for _ in range(self.held_back):  # tokens held back for stop matching: ids, no text
            yield pb.GenerateResponse(token_ids=[7])
        for i, d in enumerate(self.deltas):
            yield pb.GenerateResponse(text_delta=d, token_ids=[100 + i])
        if self.fail_with is not None:
            raise FakeRpcError(self.fail_with)
        yield pb.GenerateResponse(final=pb.GenerateFinal(
            finish_reason=pb.FINISH_REASON_LENGTH,
            usage=pb.Usage(prompt_tokens=3, generated_tokens=len(self.deltas))))

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeClient:
    def __init__(self, address: str, deltas: list[str], fail_after: int | None = None,
                 fail_with: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, held_back: int = 0) -> None:
        """`fail_after=N`: the stream fails with `fail_with` after N deltas; None: it completes."""
        self.address, self.deltas, self.fail_after, self.fail_with = address, deltas, fail_after, fail_with
        self.held_back = held_back
        self.calls = 0
        self.streams: list[FakeStream] = []

    def generate(self, prompt, sampling, *, timeout, request_id=""):
        self.calls += 1
        assert timeout > 0
        if self.fail_after is None:
            s = FakeStream(self.deltas, None, self.held_back)
        else:
            s = FakeStream(self.deltas[:self.fail_after], self.fail_with, self.held_back)
        self.streams.append(s)
        return s


def pool_of(*clients: FakeClient, max_attempts: int = 3) -> WorkerPool:
    pool = WorkerPool({"m": [c.address for c in clients]}, max_attempts=max_attempts)
    for r, c in zip(pool.replicas["m"], clients):
        r.client = c
    # deterministic pick order: the first client is least loaded, the rest progressively more
    for i, r in enumerate(pool.replicas["m"]):
        r.inflight = i * 10
    return pool


class Collector:
    def __init__(self) -> None:
        self.deltas: list[str] = []

    async def __call__(self, delta: str) -> None:
        self.deltas.append(delta)


GOOD = ["The", " answer", " is", " 4", "."]
BAD = ["Wrong", " partial", " text"]


async def generate(pool: WorkerPool, on_delta=None, timeout: float = 5.0):
    return await pool.generate("m", PROMPT, SAMPLING, deadline=time.monotonic() + timeout, on_delta=on_delta)


@pytest.mark.parametrize("with_callback", [False, True], ids=["no-callback", "callback"])
async def test_failure_before_any_delta_is_retried_on_another_replica(with_callback):
    bad, good = FakeClient("a", BAD, fail_after=0), FakeClient("b", GOOD)
    cb = Collector() if with_callback else None
    completion, record = await generate(pool_of(bad, good), cb)
    assert completion.text == "".join(GOOD) and record.attempts == 2 and record.replica == "b"
    assert bad.calls == 1 and good.calls == 1
    if cb is not None:
        assert cb.deltas == GOOD  # each delta exactly once, none from the failed stream


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_with_a_callback_failure_after_n_deltas_is_final_and_nothing_is_repeated(n):
    bad, good = FakeClient("a", BAD, fail_after=n), FakeClient("b", GOOD)
    cb = Collector()
    with pytest.raises(ModelCallError) as err:
        await generate(pool_of(bad, good), cb)
    assert err.value.grpc_code == "UNAVAILABLE" and "'m'" in str(err.value)
    assert good.calls == 0, "retried after text reached the caller"
    assert cb.deltas == BAD[:n], "the caller got each emitted delta exactly once"
    assert bad.streams[0].cancelled


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_without_a_callback_failure_after_n_deltas_is_retried_and_the_partial_text_dropped(n):
    bad, good = FakeClient("a", BAD, fail_after=n), FakeClient("b", GOOD)
    completion, record = await generate(pool_of(bad, good))
    assert completion.text == "".join(GOOD), "partial text of the failed attempt leaked into the answer"
    assert completion.token_ids == [100 + i for i in range(len(GOOD))]
    assert record.attempts == 2 and good.calls == 1


async def test_with_a_callback_tokens_held_back_without_text_do_not_block_the_retry():
    """A stream that sent only token ids (text held back for stop matching) delivered nothing."""
    bad, good = FakeClient("a", BAD, fail_after=0, held_back=3), FakeClient("b", GOOD)
    cb = Collector()
    completion, _ = await generate(pool_of(bad, good), cb)
    assert completion.text == "".join(GOOD) and cb.deltas == GOOD


async def test_resource_exhausted_before_output_is_retried():
    busy = FakeClient("a", BAD, fail_after=0, fail_with=grpc.StatusCode.RESOURCE_EXHAUSTED)
    good = FakeClient("b", GOOD)
    pool = pool_of(busy, good)
    completion, _ = await generate(pool, Collector())
    assert completion.text == "".join(GOOD)
    assert pool.replicas["m"][0].down_until == 0.0  # busy is not down


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_non_retryable_codes_are_not_retried(code):
    bad, good = FakeClient("a", BAD, fail_after=0, fail_with=code), FakeClient("b", GOOD)
    with pytest.raises((ModelCallError, DeadlineExceeded)):
        await generate(pool_of(bad, good), Collector())
    assert good.calls == 0


async def test_attempts_are_bounded_and_each_replica_is_tried_once():
    clients = [FakeClient(a, BAD, fail_after=0) for a in "abcde"]
    with pytest.raises(ModelCallError):
        await generate(pool_of(*clients, max_attempts=3))
    assert [c.calls for c in clients] == [1, 1, 1, 0, 0]


async def test_unavailable_replica_is_skipped_by_the_next_request():
    bad, good = FakeClient("a", BAD, fail_after=1), FakeClient("b", GOOD)
    pool = pool_of(bad, good)
    with pytest.raises(ModelCallError):
        await generate(pool, Collector())
    completion, record = await generate(pool, Collector())
    assert record.replica == "b" and record.attempts == 1 and bad.calls == 1


async def test_a_stream_without_a_final_message_is_an_error_not_a_silent_answer():
    class NoFinal(FakeClient):
        def generate(self, *a, **kw):
            self.calls += 1

            class S(FakeStream):
                async def _run(self):
                    yield pb.GenerateResponse(text_delta="half")

            return S([], None)

    with pytest.raises(ModelCallError, match="without a final"):
        await generate(pool_of(NoFinal("a", [])), Collector())


async def test_deadline_already_passed_fails_without_calling():
    c = FakeClient("a", GOOD)
    with pytest.raises(DeadlineExceeded):
        await generate(pool_of(c), timeout=-1.0)
    assert c.calls == 0
