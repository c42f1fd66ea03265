"""Affinity vs load with a hand-written index fake (no Redis)."""
import pytest

from router.scorers.prefix import PrefixAffinityScorer, PrefixScorerConfig
from workers.kv.keys import Namespace, block_hashes

NS = Namespace(model_id="m", dtype="float32", block_size=4, layout="cpu:blocks-first")
SHARED = list(range(100, 132))  # 8 blocks



def warm_prefix_lengths(warm: dict[str, list], hashes: list) -> dict[str, int]:
    """{replica: number of leading blocks of `hashes` it holds}, replicas holding none left out: what a prefix
    index answers, for the fakes of these tests."""
    out = {}
    for r, held in warm.items():
        n = 0
        while n < len(hashes) and n < len(held) and held[n] == hashes[n]:
            n += 1
        if n:
            out[r] = n
    return out

class FakeIndex:
    """Replica -> token prefixes it holds warm; answers like workers.kv.index.PrefixIndex."""

    def __init__(self, warm: dict[str, list[int]]):
        self.warm = {r: block_hashes(t, NS) for r, t in warm.items()}
        self.calls = 0

    def longest_warm_prefix(self, hashes):
        self.calls += 1
        return warm_prefix_lengths(self.warm, hashes)


def pick(scores):
    return max(scores, key=lambda r: (scores[r], r))


def test_shared_prefix_goes_to_the_warm_replica_when_balanced():
    s = PrefixAffinityScorer(FakeIndex({"a": SHARED}), NS)
    for loads in ({"a": 0, "b": 0}, {"a": 3, "b": 1}, {"a": 8, "b": 4}):
        scores = s.score(["a", "b"], SHARED + [1, 2, 3], loads)
        assert pick(scores) == "a", loads
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_spreads_when_the_warm_replica_is_overloaded():
    s = PrefixAffinityScorer(FakeIndex({"a": SHARED}), NS)
    scores = s.score(["a", "b"], SHARED, {"a": 20, "b": 2})
    assert pick(scores) == "b" and scores["a"] == 0.0


def test_both_imbalance_thresholds_must_hold():
    s = PrefixAffinityScorer(FakeIndex({"a": SHARED}), NS, PrefixScorerConfig(balance_abs_threshold=8, balance_rel_threshold=1.5))
    assert not s.imbalanced([30, 25])  # gap 5: not imbalanced
    assert not s.imbalanced([40, 30])  # gap 10 but ratio 1.33
    assert s.imbalanced([20, 10])


def test_longer_warm_prefix_wins_and_equal_warmth_prefers_less_load():
    idx = FakeIndex({"a": SHARED[:8], "b": SHARED, "c": SHARED})
    scores = PrefixAffinityScorer(idx, NS).score(["a", "b", "c"], SHARED, {"a": 0, "b": 2, "c": 1})
    assert scores["c"] > scores["b"] > scores["a"]


def test_no_useful_match_falls_back_to_load():
    idx = FakeIndex({"a": SHARED})
    scores = PrefixAffinityScorer(idx, NS).score(["a", "b"], list(range(500, 540)), {"a": 1, "b": 0})
    assert pick(scores) == "b"
    # prompt shorter than a block: no lookup at all
    idx.calls = 0
    PrefixAffinityScorer(idx, NS).score(["a", "b"], [1, 2], {"a": 0, "b": 0})
    assert idx.calls == 0


def test_a_stream_of_shared_prefix_requests_splits_by_load():
    """Simulated pool: each request adds 1 load to the picked replica; none finish."""
    s = PrefixAffinityScorer(FakeIndex({"a": SHARED}), NS)
    loads = {"a": 0, "b": 0}
    for _ in range(40):
        loads[pick(s.score(["a", "b"], SHARED, loads))] += 1
    # affinity keeps "a" ahead but the imbalance rule caps the gap
    assert loads["a"] > loads["b"] > 0
    assert loads["a"] - loads["b"] <= 8 + 1


@pytest.mark.parametrize("kw", [{"balance_rel_threshold": 0.5}, {"balance_abs_threshold": -1}, {"match_threshold": 2.0}])
def test_bad_config_is_rejected(kw):
    with pytest.raises(ValueError):
        PrefixScorerConfig(**kw)


# -- the pool's adapter: namespace from the workers' Info, async index read -----------------------------
import asyncio  # noqa: E402

from thinkroute.v1 import worker_pb2 as pb  # noqa: E402

from router.scorers import PickRequest, PoolPrefixScorer  # noqa: E402


class AsyncFakeIndex:
    def __init__(self, warm: dict[str, list[int]], ns: Namespace):
        self.fake = FakeIndex({})
        self.fake.warm = {r: block_hashes(t, ns) for r, t in warm.items()}
        self.namespaces = []

    async def longest_warm_prefix(self, ns, hashes):
        self.namespaces.append(ns)
        return self.fake.longest_warm_prefix(hashes)


def pick_request(prompt_ids, namespaces):
    return PickRequest(model="pool-name-not-the-model", inflight={"a": 0, "b": 0}, prompt_ids=prompt_ids,
                       extra={"replica_ids": {"a": "w-a", "b": "w-b"}, "kv_namespaces": namespaces})


async def test_the_prompt_is_hashed_in_the_namespace_the_workers_publish():
    published = pb.KvNamespace(model_id="HuggingFaceTB/SmolLM2", dtype="bfloat16", block_size=4, layout="cuda:blocks-first",
                               version=NS.version)
    ns = Namespace(model_id="HuggingFaceTB/SmolLM2", dtype="bfloat16", block_size=4, layout="cuda:blocks-first")
    s = PoolPrefixScorer(redis_url="redis://127.0.0.1:1/0")
    s.index = AsyncFakeIndex({"w-b": SHARED}, ns)
    req = pick_request(SHARED, {"a": published, "b": published})
    await s.prepare(req)
    assert s.index.namespaces == [ns]  # not one rebuilt from the pool's name and CPU constants
    req.inflight = {"a": 0, "b": 0}
    assert pick(s.score(["a", "b"], req)) == "b"


async def test_a_replica_without_a_published_namespace_matches_nothing():
    s = PoolPrefixScorer(redis_url="redis://127.0.0.1:1/0")
    s.index = AsyncFakeIndex({"w-a": SHARED}, NS)
    req = pick_request(SHARED, {"a": None, "b": None})
    await s.prepare(req)
    assert s.index.namespaces == [] and s.score(["a", "b"], req) == {"a": 1.0, "b": 1.0}  # load only


async def test_a_hung_redis_is_a_fast_load_only_pick_and_an_open_circuit():
    """A Redis that accepts connections but never answers (hung, or a black-holed network) costs one
    `timeout_s`, once; the event loop is never blocked and the pick is load-only."""
    import socket
    import time

    import redis.asyncio  # noqa: F401 - the first import is not part of the request path

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # never accepted, never answered
    try:
        s = PoolPrefixScorer(redis_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0", timeout_s=0.05)
        published = pb.KvNamespace(model_id="m", dtype="float32", block_size=4, layout="cpu:blocks-first",
                                   version=NS.version)
        req = pick_request(SHARED, {"a": published, "b": published})
        ticks = 0

        async def ticker():  # proves the loop keeps running while the read waits
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        await s.prepare(req)
        elapsed = time.perf_counter() - t0
        task.cancel()
        assert elapsed < 0.5 and ticks >= 3, (elapsed, ticks)
        assert "prefix_match" not in req.extra and s.index.errors == 1
        req.inflight = {"a": 3, "b": 1}
        assert s.score(["a", "b"], req) == {"a": 0.0, "b": 1.0}  # the load rule
        await s.prepare(pick_request(SHARED, {"a": published}))  # open circuit: Redis not tried again
        assert s.index.errors == 1
    finally:
        hung.close()
