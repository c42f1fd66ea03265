"""The picker tokenizes (and reads the prefix index) only when the prompt's ids can change the pick.

Counts Tokenize RPCs and index reads on hand-written fake workers; every skip is checked to pick
exactly what the always-tokenize picker picks (the same replica, or the same set of tied best
replicas for the random tie-break), including a randomized comparison over loads, warm replicas,
namespaces, Redis, sessions and weights. Pure logic.
"""
from __future__ import annotations

import random
import time

import grpc
import pytest

from thinkroute.v1 import worker_pb2 as pb

from router import sessions
from router.pool import WorkerPool
from router.scorers import LeastLoadScorer, PoolPrefixScorer
from router.scorers.session import SessionAffinityScorer, rendezvous_order
from tests.unit.test_prefix_scorer import warm_prefix_lengths
from workers.kv.keys import Namespace, block_hashes
from workers.types import PromptInput, Sampling

NS = Namespace(model_id="m", dtype="float32", block_size=4, layout="cpu:blocks-first")
PUBLISHED = pb.KvNamespace(model_id=NS.model_id, dtype=NS.dtype, block_size=NS.block_size, layout=NS.layout,
                           version=NS.version)
IDS = list(range(100, 132))  # 8 full blocks
PROMPT = PromptInput(text="a prompt the fake tokenizes to IDS")


class FakeIndex:
    """Replica id -> the token prefix it holds warm; counts reads; `open` mimics the circuit."""

    def __init__(self, warm: dict[str, list[int]]) -> None:
        self.warm = {r: block_hashes(t, NS) for r, t in warm.items()}
        self.reads = 0
        self.open = False

    def circuit_open(self) -> bool:
        return self.open

    async def longest_warm_prefix(self, ns, hashes):
        if self.open:
            return None  # like AsyncWarmIndex: no read while the circuit is open
        self.reads += 1
        return warm_prefix_lengths(self.warm, hashes)


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}")


class FakeStream:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def __aiter__(self):
        return self._run()

    async def _run(self):
        if self.fail:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        yield pb.GenerateResponse(text_delta="ok", token_ids=[7])
        yield pb.GenerateResponse(final=pb.GenerateFinal(finish_reason=pb.FINISH_REASON_LENGTH,
                                                         usage=pb.Usage(prompt_tokens=32, generated_tokens=1)))

    def cancel(self) -> bool:
        return True


class FakeWorker:
    """Tokenize -> IDS (counted); Info with or without a KV namespace; Generate ok or UNAVAILABLE."""

    def __init__(self, address: str, namespace: bool = True, fail_generate: bool = False) -> None:
        self.address, self.namespace, self.fail_generate = address, namespace, fail_generate
        self.tokenize_calls = self.info_calls = self.generate_calls = 0

    async def tokenize(self, prompt, timeout):
        self.tokenize_calls += 1
        return list(IDS)

    async def info(self, timeout):
        self.info_calls += 1
        info = pb.InfoResponse(model_id=NS.model_id, replica_id=f"w-{self.address}")
        if self.namespace:
            info.kv_namespace.CopyFrom(PUBLISHED)
        return info

    def generate(self, prompt, sampling, *, timeout, request_id=""):
        self.generate_calls += 1
        return FakeStream(self.fail_generate)


class RecordingRandom(random.Random):
    """Remembers the replicas each tie-break chose among: the picker's decision is that set (the random
    choice within it also depends on how many picks the rng served before, e.g. the Tokenize call's own)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.ties: list[set[str]] = []

    def choice(self, seq):
        self.ties.append({r.address for r in seq})
        return super().choice(seq)


def make_pool(workers: list[FakeWorker], weights=(1.0, 2.0, 0.0), redis: bool = True,
              warm: dict[str, list[int]] | None = None, seed: int = 0, **prefix_knobs) -> WorkerPool:
    prefix = PoolPrefixScorer(redis_url="redis://127.0.0.1:1/0" if redis else None, **prefix_knobs)
    if redis:
        prefix.index = FakeIndex(warm or {})
    scorers = [(LeastLoadScorer(), weights[0]), (prefix, weights[1])]
    if weights[2]:
        scorers.append((SessionAffinityScorer(), weights[2]))
    pool = WorkerPool({"m": [w.address for w in workers]}, scorers=scorers)
    for r, w in zip(pool.replicas["m"], workers):
        r.client = w
    pool.picker.rng = RecordingRandom(seed)
    return pool


def tokenize_calls(workers: list[FakeWorker]) -> int:
    return sum(w.tokenize_calls for w in workers)


def set_loads(pool: WorkerPool, loads: dict[str, int]) -> None:
    for r in pool.replicas["m"]:
        r.inflight = loads.get(r.address, 0)


async def pick(pool: WorkerPool, prompt: PromptInput = PROMPT) -> str:
    return (await pool.pick("m", prompt=prompt, deadline=time.monotonic() + 5)).address


async def reference_pick(pool: WorkerPool, prompt: PromptInput = PROMPT) -> str:
    """What the picker chose before the skip: always Info, Tokenize and the index read."""
    skip = pool.picker._skip_reason
    pool.picker._skip_reason = lambda candidates, request: None
    try:
        return await pick(pool, prompt)
    finally:
        pool.picker._skip_reason = skip


@pytest.fixture(autouse=True)
def no_session():
    sessions.bind("")
    yield
    sessions.bind("")


async def test_a_balanced_pool_with_a_warm_replica_still_tokenizes_and_follows_the_prefix():
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, warm={"w-b": IDS})
    assert await pick(pool) == "b"
    assert tokenize_calls(workers) == 1 and pool.scorers[1][0].index.reads == 1
    assert pool.picker.prompt_ids_skipped == {"tokenized": 1}


async def test_without_redis_nothing_is_tokenized_and_the_least_loaded_replica_is_picked():
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, redis=False)
    set_loads(pool, {"a": 3, "b": 1})
    assert await pick(pool) == "b"
    assert tokenize_calls(workers) == 0  # the old picker called Tokenize here
    assert sum(w.info_calls for w in workers) == 0
    assert pool.picker.prompt_ids_skipped == {"no_redis": 1}
    assert await reference_pick(pool) == "b" and tokenize_calls(workers) == 1


async def test_a_session_that_outweighs_load_and_prefix_decides_without_tokenizing():
    """The embedded default's weights (load 1, prefix 2, session 4): the session's replica wins however warm the other is."""
    workers = [FakeWorker("a"), FakeWorker("b"), FakeWorker("c")]
    preferred = rendezvous_order("conv-1", ["a", "b", "c"])[0]
    other = next(a for a in "abc" if a != preferred)
    pool = make_pool(workers, weights=(1.0, 2.0, 4.0), warm={f"w-{other}": IDS})
    sessions.bind("conv-1")
    set_loads(pool, {preferred: 2, other: 0})
    assert await pick(pool) == preferred
    assert tokenize_calls(workers) == 0 and pool.scorers[1][0].index.reads == 0
    assert pool.picker.prompt_ids_skipped == {"decided_without_ids": 1}
    assert await reference_pick(pool) == preferred


async def test_a_spilled_session_tokenizes_again():
    workers = [FakeWorker("a"), FakeWorker("b")]
    preferred = rendezvous_order("conv-1", ["a", "b"])[0]
    other = "b" if preferred == "a" else "a"
    pool = make_pool(workers, weights=(1.0, 2.0, 4.0), warm={f"w-{other}": IDS})
    pool.picker.scorers[2] = (SessionAffinityScorer(spill_gap=1), 4.0)
    sessions.bind("conv-1")
    set_loads(pool, {preferred: 3, other: 0})  # more than spill_gap 1 above the idlest: session scores 0
    assert await pick(pool) == other
    assert tokenize_calls(workers) == 1


async def test_an_imbalanced_pool_is_load_only_without_tokenizing():
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, warm={"w-a": IDS})
    set_loads(pool, {"a": 20, "b": 2})  # gap 18 > 8 and 20 > 1.5 x 2
    assert await pick(pool) == "b"
    assert tokenize_calls(workers) == 0
    assert pool.picker.prompt_ids_skipped == {"imbalanced": 1}
    assert await reference_pick(pool) == "b"


async def test_workers_without_a_kv_namespace_are_asked_for_info_once_and_never_tokenize():
    workers = [FakeWorker("a", namespace=False), FakeWorker("b", namespace=False)]
    pool = make_pool(workers, warm={"w-a": IDS})
    set_loads(pool, {"a": 1, "b": 0})
    for _ in range(3):
        assert await pick(pool) == "b"
    assert tokenize_calls(workers) == 0 and [w.info_calls for w in workers] == [1, 1]
    assert pool.picker.prompt_ids_skipped == {"no_kv_namespace": 3}


async def test_an_open_redis_circuit_skips_tokenize_and_load_weight_one_too():
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, warm={"w-a": IDS})
    pool.scorers[1][0].index.open = True
    set_loads(pool, {"a": 1, "b": 0})
    assert await pick(pool) == "b" and tokenize_calls(workers) == 0
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, warm={"w-a": IDS}, load_weight=1.0)
    set_loads(pool, {"a": 1, "b": 0})
    assert await pick(pool) == "b" and tokenize_calls(workers) == 0
    assert pool.picker.prompt_ids_skipped == {"load_weight_1": 1}


async def test_the_real_index_reports_its_open_circuit():
    s = PoolPrefixScorer(redis_url="redis://127.0.0.1:1/0")
    assert not s.index.circuit_open()
    s.index._open_until = time.monotonic() + 5
    assert s.index.circuit_open()


async def test_a_token_ids_prompt_is_its_own_ids_without_a_tokenize_call():
    workers = [FakeWorker("a"), FakeWorker("b")]
    pool = make_pool(workers, warm={"w-b": IDS})
    assert await pick(pool, PromptInput(token_ids=tuple(IDS))) == "b"
    assert tokenize_calls(workers) == 0 and pool.scorers[1][0].index.reads == 1


async def test_a_retried_generate_tokenizes_once():
    workers = [FakeWorker("a", fail_generate=True), FakeWorker("b", fail_generate=True), FakeWorker("c")]
    pool = make_pool(workers, warm={"w-a": IDS, "w-b": IDS})
    completion, record = await pool.generate("m", PROMPT, Sampling(max_tokens=1), deadline=time.monotonic() + 5)
    assert completion.text == "ok" and record.attempts == 3
    assert [w.generate_calls for w in workers] == [1, 1, 1]
    assert tokenize_calls(workers) == 1  # the retries read the cached ids


@pytest.mark.parametrize("seed", range(6))
async def test_every_skip_picks_what_the_always_tokenize_picker_picks(seed):
    """Random pools: loads, warm replicas, namespaces, Redis or not, session or not, weights. For each state the
    picker with the skip and the reference (always tokenize) choose among the same best replicas."""
    rng = random.Random(seed)
    skipped = 0
    for trial in range(60):
        n = rng.randint(2, 4)
        names = "abcd"[:n]
        workers = [FakeWorker(a, namespace=rng.random() < 0.8) for a in names]
        warm = {f"w-{a}": IDS[: 4 * rng.randint(0, 8)] for a in names if rng.random() < 0.5}
        weights = (rng.choice([0.0, 1.0, 0.5]), rng.choice([1.0, 2.0, 3.0]), rng.choice([0.0, 2.0, 4.0]))
        knobs = {"load_weight": rng.choice([0.2, 1.0]), "balance_abs_threshold": rng.choice([2, 8])}
        redis = rng.random() < 0.85
        loads = {a: rng.choice([0, 0, 1, 2, 5, 12]) for a in names}
        session = rng.choice(["", "conv-x", "conv-y"])
        state = rng.random()
        new = make_pool(workers, weights, redis, warm, seed=trial, **knobs)
        ref = make_pool([FakeWorker(w.address, w.namespace) for w in workers], weights, redis, warm, seed=trial, **knobs)
        for p in (new, ref):
            set_loads(p, loads)
            if redis and state < 0.1:
                p.scorers[1][0].index.open = True
        sessions.bind(session)
        await pick(new)
        await reference_pick(ref)
        got, want = new.picker.rng.ties[-1], ref.picker.rng.ties[-1]  # the last pick is the model call's
        assert got == want, (trial, loads, warm, weights, knobs, redis, session, dict(new.picker.prompt_ids_skipped))
        skipped += sum(v for k, v in new.picker.prompt_ids_skipped.items() if k != "tokenized")
    assert skipped > 10  # the comparison covered skips, not only tokenized picks

