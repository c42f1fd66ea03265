"""WorkerPool's filter -> score -> pick and retry rules, with hand-written fake clients (pure logic)."""
from __future__ import annotations

import time

import grpc
import pytest

from router.errors import ModelCallError, NoReplica, NotFound
from router.pool import WorkerPool
from router.scorers import PickRequest, PoolPrefixScorer
from workers.types import PromptInput


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}")


class FakeClient:
    def __init__(self, address, fail_with=None):
        self.address, self.fail_with, self.calls = address, fail_with, 0

    async def tokenize(self, prompt, timeout):
        self.calls += 1
        if self.fail_with:
            raise FakeRpcError(self.fail_with)
        return [1, 2, 3]


def pool_with(clients: dict[str, FakeClient]) -> WorkerPool:
    pool = WorkerPool({"m": list(clients)})
    for r in pool.replicas["m"]:
        r.client = clients[r.address]
    return pool


async def test_picks_least_loaded_replica():
    pool = pool_with({"a": FakeClient("a"), "b": FakeClient("b")})
    pool.replicas["m"][0].inflight = 5
    assert (await pool.pick("m")).address == "b"


async def test_unavailable_replica_is_retried_elsewhere_and_marked_down():
    bad, good = FakeClient("a", grpc.StatusCode.UNAVAILABLE), FakeClient("b")
    pool = pool_with({"a": bad, "b": good})
    pool.replicas["m"][1].inflight = 3  # make the bad one the first pick
    ids = await pool.tokenize("m", PromptInput(text="x"), deadline=time.monotonic() + 5)
    assert ids == [1, 2, 3] and bad.calls == 1 and good.calls == 1
    assert pool.replicas["m"][0].down_until > time.monotonic()


async def test_invalid_argument_is_not_retried():
    a, b = FakeClient("a", grpc.StatusCode.INVALID_ARGUMENT), FakeClient("b", grpc.StatusCode.INVALID_ARGUMENT)
    pool = pool_with({"a": a, "b": b})
    with pytest.raises(ModelCallError) as err:
        await pool.tokenize("m", PromptInput(text="x"), deadline=time.monotonic() + 5)
    assert err.value.grpc_code == "INVALID_ARGUMENT" and a.calls + b.calls == 1


async def test_all_replicas_down_is_unavailable_with_the_model_name():
    pool = pool_with({"a": FakeClient("a", grpc.StatusCode.UNAVAILABLE)})
    with pytest.raises(ModelCallError, match="'m'"):
        await pool.tokenize("m", PromptInput(text="x"), deadline=time.monotonic() + 5)
    with pytest.raises(NoReplica):  # now marked down: fails at once
        await pool.tokenize("m", PromptInput(text="y"), deadline=time.monotonic() + 5)


async def test_unknown_model_lists_the_served_ones():
    pool = pool_with({"a": FakeClient("a")})
    with pytest.raises(NotFound, match=r"\['m'\]"):
        await pool.pick("nope")


def test_prefix_scorer_without_redis_scores_nothing():
    s = PoolPrefixScorer(redis_url=None)
    req = PickRequest(model="m", inflight={"a": 0, "b": 0}, prompt_ids=[1] * 300, extra={"replica_ids": {"a": "m-0"}})
    assert s.score(["a", "b"], req) == {"a": 0.0, "b": 0.0}


def test_model_call_error_survives_pickling():
    """Ray ships exceptions between processes: the status code and the message must survive."""
    import pickle

    e = ModelCallError("boom", model="m", role="small", step=3, code="INVALID_ARGUMENT")
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.grpc_code == "INVALID_ARGUMENT" and back.http_status == 400
