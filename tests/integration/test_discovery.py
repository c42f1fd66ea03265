"""Worker discovery, end to end with real processes: a worker started by hand (`thinkroute worker --config
FILE --register redis://...`, Redis with AUTH, the password only in the environment) joins a running
router pool through the Redis registry, receives traffic, and is dropped within the stated time after
it is killed (SIGKILL: no deregistration, its key has to expire).

The same worker runs the Redis KV connector from its --config file and publishes the connector's
namespace in `Info.kv_namespace`; its log carries the routed request's id. Paused (SIGSTOP), it leaves
traffic through grpc.health.v1 probing and returns when resumed.
86 s measured on the 2-core CI machine under load (one vLLM worker start dominates), hence `slow`.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "discovery-test-password-0123456789"
MAC_KEY = "discovery-test-mac-key-0123456789abcdef"
HEARTBEAT_S = 1.0
POLL_S = 0.5
#: The stated bound: a killed worker leaves the pool within 3 x heartbeat (its key's TTL) + one poll.
DROP_BOUND_S = 3 * HEARTBEAT_S + POLL_S


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory):
    from router.redis_server import RedisServer

    srv = RedisServer(free_port(), tmp_path_factory.mktemp("redis"), maxmemory_bytes=64 << 20, password=PASSWORD)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def secrets_env():
    names = {"THINKROUTE_REDIS_PASSWORD": PASSWORD, "THINKROUTE_KV_MAC_KEY": MAC_KEY}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def start_registered_worker(tmp: Path, redis_url: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    cfg = tmp / "worker.yaml"
    cfg.write_text("model: smollm2-135m\nbackend: vllm\nmax_model_len: 1024\nkv_cache_gib: 0.5\nmax_num_seqs: 8\n"
                   "kv_connector: redis\n"
                   f"registration: {{url: '{redis_url}', heartbeat_s: {HEARTBEAT_S}}}\n")
    log = tmp / "worker.log"
    ready = tmp / "worker.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "worker", "--config", str(cfg), "--port", str(port),
         "--ready-file", str(ready), "--replica-id", "external-1"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        env={**os.environ})  # password and MAC key: environment only
    return proc, f"127.0.0.1:{port}", log


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


async def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text(errors="replace")[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_an_external_worker_registers_serves_and_is_dropped_after_it_dies(redis_srv, secrets_env, tmp_path):
    from router import request_ids
    from router.discovery import RedisDiscovery
    from router.pool import WorkerPool
    from router.scorers.prefix import AsyncWarmIndex
    from workers.kv.keys import Namespace, block_hashes
    from workers.types import PromptInput, Sampling

    # The router's pool exists first, empty: the worker joins it without a restart.
    pool = WorkerPool({"smollm2-135m": []}, health_interval_s=0.5, health_timeout_s=1.0,
                      discovery=RedisDiscovery(redis_srv.url, "THINKROUTE_REDIS_PASSWORD", poll_interval_s=POLL_S))
    pool.replica_set.ensure_running()
    proc, address, log = start_registered_worker(tmp_path, redis_srv.url)
    try:
        await wait_for(lambda: [r.address for r in pool.replica_set.candidates("smollm2-135m")] == [address],
                       300, "the registered worker to join the pool", proc, log)
        replica = pool.replicas["smollm2-135m"][0]
        assert replica.source == "registry" and replica.replica_id == "external-1"

        with request_ids.bound("discovery-req-42"):
            completion, record = await pool.generate("smollm2-135m", PromptInput(text="What is 2 + 2?"),
                                                     Sampling(max_tokens=8), deadline=time.monotonic() + 60)
        assert record.replica == address and completion.generated_tokens > 0
        await wait_for(lambda: "discovery-req-42/1" in log.read_text(errors="replace"), 10,
                       "the request id in the worker's log")

        # The KV namespace the worker publishes is the one its connector writes the prefix index in: the
        # router's async index read, hashing the prompt in the published namespace, finds this replica warm.
        info = await replica.client.info()
        assert info.HasField("kv_namespace")
        ns = info.kv_namespace
        assert (ns.model_id, ns.dtype, ns.layout) == ("smollm2-135m", "float32", "cpu:blocks-first") and ns.block_size > 0
        long_prompt = PromptInput(text="Count the apples. " * 120)
        await pool.generate("smollm2-135m", long_prompt, Sampling(max_tokens=2), deadline=time.monotonic() + 60)
        ids = await pool.tokenize("smollm2-135m", long_prompt, deadline=time.monotonic() + 30)
        published = Namespace(model_id=ns.model_id, dtype=ns.dtype, block_size=ns.block_size, layout=ns.layout,
                              version=ns.version)
        hashes = block_hashes(ids, published)
        assert len(hashes) >= 2
        index = AsyncWarmIndex(redis_srv.url, "THINKROUTE_REDIS_PASSWORD", timeout_s=1.0)
        warm: dict = {}

        async def poll_index():
            nonlocal warm
            warm = await index.longest_warm_prefix(published, hashes) or {}
            return warm.get("external-1", 0) >= 1

        deadline = time.monotonic() + 15
        while not await poll_index():
            assert time.monotonic() < deadline, f"the worker's index entries are not under the published namespace: {warm}"
            await asyncio.sleep(0.3)

        # A hung worker (SIGSTOP: it accepts connections, answers nothing) leaves traffic by health probing
        # alone (a pool on its static address, no registry), and returns once it answers again.
        static = WorkerPool({"smollm2-135m": [address]}, health_interval_s=0.5, health_timeout_s=1.0,
                            unhealthy_after=3)
        static.replica_set.ensure_running()
        try:
            await wait_for(lambda: static.replica_set.pool("smollm2-135m")[0].load is not None, 10, "a first probe")
            os.killpg(proc.pid, signal.SIGSTOP)
            hung_at = time.monotonic()
            await wait_for(lambda: not static.replica_set.candidates("smollm2-135m"), 10, "the hung worker to leave traffic")
            print(f"hung worker: out of traffic after {time.monotonic() - hung_at:.1f} s")
            os.killpg(proc.pid, signal.SIGCONT)
            await wait_for(lambda: bool(static.replica_set.candidates("smollm2-135m")), 15, "the worker to return")
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
            await static.close()
        await wait_for(lambda: bool(pool.replica_set.candidates("smollm2-135m")), 15, "the worker back in the registry")

        kill_group(proc)  # SIGKILL: no goodbye, the registration has to expire
        killed = time.monotonic()
        await wait_for(lambda: not pool.replica_set.candidates("smollm2-135m"), DROP_BOUND_S + 2,
                       "the killed worker to leave traffic")
        out_of_traffic = time.monotonic() - killed
        await wait_for(lambda: not pool.replicas["smollm2-135m"], DROP_BOUND_S + 2, "the killed worker to leave the pool")
        left = time.monotonic() - killed
        print(f"killed worker: out of traffic after {out_of_traffic:.1f} s, out of the pool after {left:.1f} s "
              f"(bound {DROP_BOUND_S:.1f} s + 2 s slack)")
        assert left <= DROP_BOUND_S + 2
    finally:
        kill_group(proc)
        await pool.close()
