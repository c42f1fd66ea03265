"""The hidden-state micro-batcher (workers/hidden.py) with a hand-written fake model: batching,
per-call column selection, token-bounded chunks, cancelled callers, errors; and `need_of`."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from workers.hidden import HiddenStateBatcher, Need, need_of

H = 4


class FakeModel:
    """states[b, layer-major x pooling, :] = f(sum of ids, layer, pooling); records every forward."""

    pad_id = 0

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[list[int]]] = []
        self.delay_s, self.fail = delay_s, fail
        self.thread_ids: set[int] = set()

    @staticmethod
    def value(ids, layer, pool) -> float:
        return sum(ids) * 1000 + layer * 10 + (1 if pool == "mean" else 0)

    def features(self, batch, resolved, poolings, uncertainty):
        import time

        self.thread_ids.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("boom")
        time.sleep(self.delay_s)
        self.calls.append([list(x) for x in batch])
        states = np.array([[[self.value(ids, layer, p)] * H for layer in resolved for p in poolings] for ids in batch],
                          np.float32)
        unc = np.array([[1.0, 2.0, float(len(ids))] for ids in batch], np.float32) if uncertainty else None
        return states, unc


def test_need_of():
    assert need_of([2, 4, 8], False, 30) == Need(8, False)
    assert need_of([30], False, 30) == Need(30, True)
    assert need_of([2], True, 30) == Need(30, True)
    assert need_of([0], False, 30) == Need(0, False)


def test_concurrent_calls_share_one_forward_and_get_their_own_columns():
    model = FakeModel()

    async def run():
        b = HiddenStateBatcher(model, window_ms=20)
        try:
            return await asyncio.gather(
                b.submit([[1, 2], [3]], [2, 4], ["last_token", "mean"], False),
                b.submit([[5, 5, 5]], [4], ["mean"], True),
                b.submit([[7]], [8, 2], ["last_token"], False),
            ), b
        finally:
            await b.close()

    (r1, r2, r3), b = asyncio.run(run())
    assert b.batches == 1 and b.forwards == 1 and len(model.calls) == 1
    assert model.thread_ids and threading.get_ident() not in model.thread_ids  # never on the event loop's thread
    assert [r.states[:, 0].tolist() for r in r1] == [
        [FakeModel.value([1, 2], 2, "last_token"), FakeModel.value([1, 2], 2, "mean"),
         FakeModel.value([1, 2], 4, "last_token"), FakeModel.value([1, 2], 4, "mean")],
        [FakeModel.value([3], 2, "last_token"), FakeModel.value([3], 2, "mean"),
         FakeModel.value([3], 4, "last_token"), FakeModel.value([3], 4, "mean")]]
    assert r1[0].layers == [2, 4] and r1[0].prompt_tokens == 2 and r1[0].uncertainty is None
    assert r2[0].states[:, 0].tolist() == [FakeModel.value([5, 5, 5], 4, "mean")]
    assert r2[0].uncertainty.tolist() == [1.0, 2.0, 3.0]
    assert r3[0].states[:, 0].tolist() == [FakeModel.value([7], 8, "last_token"), FakeModel.value([7], 2, "last_token")]


def test_forwards_are_bounded_by_padded_tokens_and_length_sorted():
    model = FakeModel()

    async def run():
        b = HiddenStateBatcher(model, window_ms=5, max_batch_tokens=8)
        try:
            return await b.submit([[1] * 4, [1], [1] * 3, [1] * 2, [1] * 4], [1], ["last_token"], False)
        finally:
            await b.close()

    res = asyncio.run(run())
    assert [r.prompt_tokens for r in res] == [4, 1, 3, 2, 4]  # results in the caller's order
    for batch in model.calls:
        assert len(batch) * max(len(x) for x in batch) <= 8
    assert [len(x) for batch in model.calls for x in batch] == [1, 2, 3, 4, 4]


def test_calls_during_a_forward_join_the_next_batch_and_cancelled_ones_are_skipped():
    model = FakeModel(delay_s=0.2)

    async def run():
        b = HiddenStateBatcher(model, window_ms=0)
        try:
            first = asyncio.ensure_future(b.submit([[1]], [1], ["mean"], False))
            await asyncio.sleep(0.05)  # the first forward is running now
            cancelled = asyncio.ensure_future(b.submit([[9, 9]], [1], ["mean"], False))
            others = [asyncio.ensure_future(b.submit([[2]], [1], ["mean"], False)),
                      asyncio.ensure_future(b.submit([[3]], [1], ["mean"], False))]
            await asyncio.sleep(0.01)
            cancelled.cancel()
            await first
            await asyncio.gather(*others)
            return b
        finally:
            await b.close()

    b = asyncio.run(run())
    assert model.calls == [[[1]], [[2], [3]]] and b.batches == 2


def test_a_failed_forward_fails_its_callers_and_the_batcher_keeps_serving():
    model = FakeModel(fail=True)

    async def run():
        b = HiddenStateBatcher(model, window_ms=1)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await b.submit([[1]], [1], ["mean"], False)
            model.fail = False
            return await b.submit([[1]], [1], ["mean"], False)
        finally:
            await b.close()

    [r] = asyncio.run(run())
    assert r.states[0, 0] == FakeModel.value([1], 1, "mean")
