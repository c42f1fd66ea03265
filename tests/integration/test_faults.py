"""The fault matrix: real processes killed (SIGKILL) or paused (SIGSTOP) while requests run.

| fault | where | what must hold |
|---|---|---|
| worker paused mid-stream (SIGSTOP) | pool, with / without a delta callback | fails UNAVAILABLE after `router.stream_stall_timeout_s` (15 s) of silence, or is retried elsewhere when nothing reached the caller; output equals the reference |
| worker killed mid-stream (SIGKILL) | pool, with / without a delta callback | the same, at once |
| worker killed between SpecReason steps | strategy over the pool | the next step runs on the other replica; the answer equals the fault-free run |
| vLLM engine core killed | worker | the stream fails UNAVAILABLE, health says NOT_SERVING, the worker exits 3 |
| Redis slow (SIGSTOP) / full (noeviction) / down (SIGKILL) | vLLM worker with the Redis KV connector | requests complete in time; output equals a fault-free worker's |
| a router replica killed under load | Ray Serve, 2 router replicas, gRPC | every request completes (same text as the worker's own answer) or fails with a status, none hangs, each answered once; serving resumes |

Every request carries a deadline and each check bounds the wall time, so a hang fails the test
instead of stalling the run. Greedy decoding everywhere: "not silently wrong" is an equality with a
reference computed by a fault-free worker of the same model and backend.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

import grpc
import pytest

from thinkroute.v1 import worker_pb2 as pb
from thinkroute.v1 import worker_pb2_grpc as pb_grpc

from router.errors import ModelCallError
from router.pool import WorkerPool
from tests.conftest import REPO, WorkerHandle, free_port, start_worker
from workers.types import ChatMessage, PromptInput, Sampling

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~10 min on 2 cores: `ops/test.sh tests`

STORY = PromptInput(messages=(ChatMessage("user", "Write a long story about a robot who learns to paint."),))
LONG = Sampling(max_tokens=64)


# -- shared helpers -------------------------------------------------------------------------------
class Tap:
    """Wraps a replica's WorkerClient: runs `action` once, right after the first text delta of a
    Generate stream reached the pool (the pool has handled that delta when `action` runs)."""

    def __init__(self, client, action) -> None:
        self.client, self.action, self.fired = client, action, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def generate(self, *args, **kwargs):
        call = self.client.generate(*args, **kwargs)
        tap = self

        async def messages():
            async for msg in call:
                yield msg
                if msg.text_delta and not tap.fired:
                    tap.fired = True
                    tap.action()

        class Stream:
            def __aiter__(self):
                return messages()

            def cancel(self):
                return call.cancel()

        return Stream()


def pool_over(victim: WorkerHandle, survivor: WorkerHandle, action) -> WorkerPool:
    """Model "m" on [victim, survivor]; the victim is picked first and tapped with `action`."""
    pool = WorkerPool({"m": [victim.address, survivor.address]}, max_attempts=2)
    v, s = pool.replicas["m"]
    v.client = Tap(v.client, action)
    s.inflight = 100  # least-load scorer: the victim is the first pick; the survivor only on retry
    return pool


class Deltas:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, delta: str) -> None:
        self.items.append(delta)


def requests_total(w: WorkerHandle) -> int:
    with grpc.insecure_channel(w.address) as ch:
        return pb_grpc.WorkerStub(ch).Load(pb.LoadRequest(), timeout=10).requests_total


def health(address: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="thinkroute.v1.Worker"),
                                                     timeout=5)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            return e.code().name


# -- pool: workers paused or killed mid-stream ---------------------------------------------------
@pytest.fixture(scope="module")
def survivor(tmp_path_factory):
    w = start_worker("smollm2-135m", "hf", tmp_path_factory.mktemp("survivor"))
    yield w.wait_ready()
    w.kill()


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="module")
def paused_victim(victim_dir, survivor):
    """A worker the pause tests stop and continue (then killed)."""
    w = start_worker("smollm2-135m", "hf", victim_dir).wait_ready()
    yield w
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(w.proc.pid, signal.SIGCONT)
    w.kill()


@pytest.fixture(scope="module")
def reference(survivor) -> str:
    """The fault-free greedy answer, from the survivor alone."""
    async def run():
        pool = WorkerPool({"m": [survivor.address]})
        try:
            completion, _ = await pool.generate("m", STORY, LONG, deadline=time.monotonic() + 120)
            return completion.text
        finally:
            await pool.close()

    text = asyncio.run(run())
    assert len(text) > 40, text
    return text


async def test_paused_worker_with_a_callback_fails_within_the_stall_timeout_and_sends_nothing_twice(paused_victim, survivor,
                                                                                              reference):
    before = requests_total(survivor)
    pool = pool_over(paused_victim, survivor, lambda: os.killpg(paused_victim.proc.pid, signal.SIGSTOP))
    deltas = Deltas()
    start = time.monotonic()
    try:
        with pytest.raises(ModelCallError) as err:
            await asyncio.wait_for(pool.generate("m", STORY, LONG, deadline=time.monotonic() + 90, on_delta=deltas),
                                   timeout=120)
        elapsed = time.monotonic() - start
    finally:
        os.killpg(paused_victim.proc.pid, signal.SIGCONT)
        await pool.close()
    assert err.value.grpc_code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), err.value
    assert elapsed < 40, f"a paused worker held the request for {elapsed:.0f} s (the stream stall timeout should end it at ~15 s)"
    assert deltas.items and reference.startswith("".join(deltas.items)), "the deltas sent are not the reference's"
    assert requests_total(survivor) == before, "retried after a delta reached the caller (it would be sent twice)"


async def test_paused_worker_without_a_callback_is_retried_and_the_answer_is_right(paused_victim, survivor,
                                                                                   reference):
    pool = pool_over(paused_victim, survivor, lambda: os.killpg(paused_victim.proc.pid, signal.SIGSTOP))
    start = time.monotonic()
    try:
        completion, record = await asyncio.wait_for(
            pool.generate("m", STORY, LONG, deadline=time.monotonic() + 90), timeout=120)
        elapsed = time.monotonic() - start
    finally:
        os.killpg(paused_victim.proc.pid, signal.SIGCONT)
        await pool.close()
    assert pool.replicas["m"][0].client.fired, "the victim never streamed: the fault was not injected"
    assert record.attempts == 2 and record.replica == survivor.address
    assert completion.text == reference
    assert elapsed < 40, f"the retry came {elapsed:.0f} s after the worker was paused (stall timeout: ~15 s)"


async def test_killed_worker_with_a_callback_fails_at_once_and_sends_nothing_twice(victim_dir, survivor, reference):
    victim = start_worker("smollm2-135m", "hf", victim_dir).wait_ready()
    before = requests_total(survivor)
    pool = pool_over(victim, survivor, victim.kill)
    deltas = Deltas()
    start = time.monotonic()
    try:
        with pytest.raises(ModelCallError) as err:
            await asyncio.wait_for(pool.generate("m", STORY, LONG, deadline=time.monotonic() + 60, on_delta=deltas),
                                   timeout=90)
    finally:
        victim.kill()
        await pool.close()
    assert err.value.grpc_code == "UNAVAILABLE" and "'m'" in str(err.value)
    assert time.monotonic() - start < 20
    assert deltas.items and reference.startswith("".join(deltas.items))
    assert requests_total(survivor) == before


async def test_killed_worker_without_a_callback_is_retried_and_the_answer_is_right(victim_dir, survivor, reference):
    victim = start_worker("smollm2-135m", "hf", victim_dir).wait_ready()
    pool = pool_over(victim, survivor, victim.kill)
    try:
        completion, record = await asyncio.wait_for(pool.generate("m", STORY, LONG, deadline=time.monotonic() + 60),
                                                    timeout=90)
    finally:
        victim.kill()
        await pool.close()
    assert pool.replicas["m"][0].client.fired
    assert record.attempts == 2 and completion.text == reference


# -- a strategy: worker killed between SpecReason steps -----------------------------------------
async def test_worker_killed_between_specreason_steps_the_next_step_runs_elsewhere_same_answer(victim_dir, survivor):
    from router.strategies import get_strategy
    from router.strategies.base import Context
    from router.trace import Trace
    from router.types import RouteQuery

    question = "Tom has 3 apples and buys 5 more. He gives 2 away. How many apples does he have?"
    cls = get_strategy("specreason")
    options = {"threshold": 0, "max_step_tokens": 12}

    async def run(pool: WorkerPool, emit=None):
        ctx = Context(pool, {"small": "s", "large": "l"}, Trace(), time.monotonic() + 120, emit)
        strategy = cls(cls.parse_options(options))
        result = await asyncio.wait_for(strategy.answer(RouteQuery(query=question, max_tokens=60), ctx), timeout=150)
        return result, ctx.trace

    clean = WorkerPool({"s": [survivor.address], "l": [survivor.address]})
    try:
        expected, _ = await run(clean)
    finally:
        await clean.close()

    victim = start_worker("smollm2-135m", "hf", victim_dir).wait_ready()
    pool = WorkerPool({"s": [victim.address, survivor.address], "l": [survivor.address]}, max_attempts=2)
    pool.replicas["s"][1].inflight = 100  # step 0's draft goes to the victim
    small_calls = 0
    real_generate = pool.generate

    async def generate(model, *a, **kw):
        nonlocal small_calls
        out = await real_generate(model, *a, **kw)
        if model == "s":
            small_calls += 1
            if small_calls == 1:
                victim.kill()  # after the first draft step, before the next
        return out

    pool.generate = generate
    deltas = Deltas()
    try:
        result, trace = await run(pool, deltas)
    finally:
        victim.kill()
        await pool.close()
    drafts = [c for c in trace.calls if c.role == "small"]
    assert small_calls >= 2 and drafts[0].replica == victim.address
    assert all(c.replica == survivor.address for c in drafts[1:]), [(c.replica, c.attempts) for c in drafts]
    assert result.text == expected.text, "the answer after the fault differs from the fault-free run"
    assert "".join(deltas.items) == result.text, "streamed deltas do not add up to the answer exactly once"


# -- vLLM workers with the Redis KV connector: Redis slow / full / down; engine core killed -------
def gsm8k_prompt(i: int, shots: int = 3) -> pb.Prompt:
    """A distinct few-shot prompt (>= 2 KV blocks) per i."""
    data = Path(os.environ.get("THINKROUTE_DATA", REPO.parent / "shared" / "data")) / "gsm8k" / "train.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()[i * shots:(i + 1) * shots + 1]]
    shots_text = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:-1])
    return pb.Prompt(text=shots_text + f"Question: {rows[-1]['question']}\nAnswer:")


def generate_direct(address: str, prompt: pb.Prompt, max_tokens: int = 16, timeout: float = 60):
    with grpc.insecure_channel(address) as ch:
        msgs = list(pb_grpc.WorkerStub(ch).Generate(
            pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens)), timeout=timeout))
    return [t for m in msgs for t in m.token_ids], msgs[-1].final


@pytest.fixture(scope="module")
def redis_kv(tmp_path_factory):
    """A real redis-server, a MAC key in the environment, two vLLM SmolLM2 workers with the connector."""
    from router.redis_server import RedisServer
    from workers.kv.config import redis_kv_transfer_config
    from workers.kv.secrets import MAC_KEY_ENV

    d = tmp_path_factory.mktemp("redis-faults")
    srv = RedisServer(free_port(), d / "redis", maxmemory_bytes=256 << 20, policy="allkeys-lru").start()
    saved = os.environ.get(MAC_KEY_ENV)
    os.environ[MAC_KEY_ENV] = secrets.token_hex(32)  # the workers inherit it; never in argv

    def cfg(replica: str) -> str:
        return json.dumps({"model": "smollm2-135m", "backend": "vllm", "kv_cache_gib": 0.5, "max_num_seqs": 4,
                           "kv_connector": redis_kv_transfer_config(srv.url, replica, model_id="smollm2-135m",
                                                                    socket_timeout_s=0.5, retry_after_s=1.0)})

    workers = [start_worker("smollm2-135m", "vllm", d, "--config-json", cfg(f"fault-{i}")) for i in (1, 2)]
    try:
        for w in workers:
            w.wait_ready()
        yield srv, workers[0], workers[1]
    finally:
        for w in workers:
            w.kill()
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()
        if saved is None:
            os.environ.pop(MAC_KEY_ENV, None)
        else:
            os.environ[MAC_KEY_ENV] = saved


def test_redis_slow_full_and_down_requests_complete_in_time_with_the_right_answer(redis_kv):
    srv, w1, w2 = redis_kv
    prompts = {name: gsm8k_prompt(i) for i, name in enumerate(["slow", "full-read", "full-write", "down"])}
    # fault-free references from w2 (which also stores the prompts' blocks in Redis)
    refs = {name: generate_direct(w2.address, p)[0] for name, p in prompts.items() if name != "full-write"}
    time.sleep(2.0)  # let w2's background writer store the blocks

    # slow: Redis paused; w1's lookups time out (0.5 s) and count as misses
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        ids, _ = generate_direct(w1.address, prompts["slow"], timeout=60)
        slow_s = time.monotonic() - start
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    assert ids == refs["slow"], "wrong answer while Redis was paused"
    assert slow_s < 30, f"a paused Redis held a request for {slow_s:.1f} s"
    time.sleep(1.5)  # past retry_after_s: the connector tries Redis again

    # full: no eviction and no room; reads still work (w2's blocks load), writes are refused
    c = srv.client()
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", str(used + 1024))
    try:
        ids, final = generate_direct(w1.address, prompts["full-read"])
        assert ids == refs["full-read"], "wrong answer from blocks loaded out of a full Redis"
        full_write_ids, _ = generate_direct(w1.address, prompts["full-write"])
        with pytest.raises(Exception, match="OOM|maxmemory"):
            c.set(b"probe-key", b"x" * 4096)
    finally:
        c.config_set("maxmemory", str(256 << 20))
        c.config_set("maxmemory-policy", "allkeys-lru")
    assert full_write_ids == generate_direct(w2.address, prompts["full-write"])[0]

    # down: Redis killed; requests still complete, correctly
    srv.proc.kill()
    srv.proc.wait(10)
    start = time.monotonic()
    ids, _ = generate_direct(w1.address, prompts["down"], timeout=60)
    assert ids == refs["down"] and time.monotonic() - start < 30
    srv.start()  # back (empty) for the next test
    assert health(w1.address) == "SERVING"


def test_vllm_engine_core_killed_mid_stream_unavailable_not_serving_exit_3(redis_kv):
    psutil = pytest.importorskip("psutil")
    _, _, w2 = redis_kv
    children = psutil.Process(w2.proc.pid).children(recursive=True)
    cores = [p for p in children if "EngineCore" in " ".join(p.cmdline() + [p.name()])] or children
    assert cores, "no engine-core child process found"

    with grpc.insecure_channel(w2.address) as ch:
        stream = pb_grpc.WorkerStub(ch).Generate(pb.GenerateRequest(
            prompt=pb.Prompt(text="Once upon a time"), sampling=pb.SamplingParams(max_tokens=200)), timeout=60)
        start = time.monotonic()
        killed = False
        with pytest.raises(grpc.RpcError) as err:
            for msg in stream:
                if msg.text_delta and not killed:
                    killed = True
                    for p in cores:
                        p.kill()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert time.monotonic() - start < 30
    assert health(w2.address) in ("NOT_SERVING", "UNAVAILABLE")
    assert w2.proc.wait(60) == 3, "a worker whose engine died must exit 3 (its supervisor restarts it)"


# -- Ray Serve: a router replica killed under load ------------------------------------------------
@pytest.fixture(scope="module")
def serve_two_replicas(survivor):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    config = load_config(overrides={
        "models": {"m": {"model": "smollm2-135m", "backend": "hf", "replicas": 0, "addresses": [survivor.address]}},
        "router.default_model": "m", "router.roles": {}, "policy": None, "serve.router_replicas": 2,
        "router.request_timeout_s": 60})
    gport, hport = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=hport),
                    grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=[ROUTER_SERVICER]))
        serve.run(build_app(config, {"m": [survivor.address]}), name="thinkroute", route_prefix="/")
        yield f"127.0.0.1:{gport}"
    finally:
        serve.shutdown()
        ray.shutdown()


def router_replica_pids() -> list[int]:
    """Live router replica processes (Ray titles an actor's process `ray::ServeReplica:<app>:<deployment>`)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline", "status"]):
        title = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:thinkroute:router" in title and p.info["status"] != psutil.STATUS_ZOMBIE:
            pids.append(p.pid)
    return pids


def test_router_replica_killed_under_load_every_request_ends_once_clearly(serve_two_replicas, survivor):
    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    md = [("application", "thinkroute")]
    question = "Name three colors."
    with grpc.insecure_channel(survivor.address) as ch:
        msgs = list(pb_grpc.WorkerStub(ch).Generate(pb.GenerateRequest(
            prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=question)],
                                                add_generation_prompt=True)),
            sampling=pb.SamplingParams(max_tokens=8)), timeout=60))
    expected = "".join(m.text_delta for m in msgs)
    pids = router_replica_pids()
    assert len(pids) == 2, pids

    channel = grpc.insecure_channel(serve_two_replicas)
    stub = rpb_grpc.RouterStub(channel)
    n, timeout = 16, 60.0

    def one(i: int):
        rid = f"fault-{i}-{secrets.token_hex(4)}"
        start = time.monotonic()
        try:
            r = stub.Generate(rpb.RouteRequest(request_id=rid, query=question, max_tokens=8), metadata=md,
                              timeout=timeout)
            return rid, "OK", r.request_id, r.text, time.monotonic() - start
        except grpc.RpcError as e:
            return rid, e.code().name, e.details(), "", time.monotonic() - start

    try:
        with cf.ThreadPoolExecutor(n) as ex:
            futures = []
            for i in range(n):
                futures.append(ex.submit(one, i))
                if i == n // 3:
                    os.kill(pids[0], signal.SIGKILL)
                time.sleep(0.1)
            results = [f.result(timeout=timeout + 30) for f in futures]  # none hangs
        ok = [r for r in results if r[1] == "OK"]
        failed = [r for r in results if r[1] != "OK"]
        assert all(r[2] == r[0] for r in ok), "a response answered another request"
        assert all(r[3] == expected for r in ok), [r[3] for r in ok if r[3] != expected]
        assert all(r[4] < timeout + 5 for r in results)
        assert all(r[1] in ("UNAVAILABLE", "INTERNAL", "CANCELLED", "ABORTED") and r[2] for r in failed), failed
        assert len(ok) >= n // 2, results
        # Serve replaces the dead replica; the router keeps answering
        deadline = time.monotonic() + 90
        while len(router_replica_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(1.0)
        assert len(router_replica_pids()) == 2
        after = [one(100 + i) for i in range(4)]
        assert all(r[1] == "OK" and r[3] == expected for r in after), after
    finally:
        channel.close()
