"""RedisKVConnector against a real redis-server and a real vLLM engine (SmolLM2, CPU).

One engine lives in this process for the whole file (VLLM_ENABLE_V1_MULTIPROCESSING=0, so
the connector objects and their counters are readable here); a second engine in a
subprocess (this file run as a script) writes a shared prefix to Redis that this engine has
never seen. Redis runs with a password (requirepass) and every client takes it from
$THINKROUTE_REDIS_PASSWORD; blocks are authenticated with $THINKROUTE_KV_MAC_KEY (both set
by the `secrets_env` fixture, inherited by the writer subprocess). About 3-5 minutes on 2 busy cores.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GSM8K = Path(os.environ.get("THINKROUTE_DATA", ROOT.parent / "shared" / "data")) / "gsm8k"
MAX_MODEL_LEN = 2048
BUDGET = 96 << 20  # Redis maxmemory: ~16 SmolLM2 float32 blocks of 128 tokens
MAC_KEY = secrets.token_urlsafe(32)
PASSWORD = secrets.token_urlsafe(24)


def engine_kwargs(kv_transfer_config: dict) -> dict:
    return dict(dtype="float32", enforce_eager=True, enable_chunked_prefill=False, max_model_len=MAX_MODEL_LEN,
                max_num_batched_tokens=MAX_MODEL_LEN, kv_transfer_config=kv_transfer_config, seed=0)


def _writer_main(model_dir: str, redis_url: str, prompts_file: str) -> None:
    """Subprocess: run the prompts once through an engine with the connector, flush, exit."""
    from vllm import LLM, SamplingParams

    from workers.kv.config import redis_kv_transfer_config
    from workers.kv.connector import INSTANCES

    llm = LLM(model_dir, **engine_kwargs(redis_kv_transfer_config(redis_url, "writer", model_id="smollm2-135m")))
    prompts = json.loads(Path(prompts_file).read_text())
    llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=1, temperature=0))
    assert INSTANCES["worker"].flush(30) and INSTANCES["scheduler"].flush(30)
    print("WRITER_STATS", json.dumps(INSTANCES["worker"].stats()), flush=True)


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def secrets_env():
    """The deployment's secrets, in the environment only (as `thinkroute serve` passes them)."""
    names = {"THINKROUTE_KV_MAC_KEY": MAC_KEY, "THINKROUTE_REDIS_PASSWORD": PASSWORD}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model_dir() -> str:
    from workers.convert import materialize
    from workers.models import resolve_model

    return str(materialize(resolve_model("smollm2-135m")))


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory):
    from router.redis_server import RedisServer, free_port

    srv = RedisServer(free_port(), tmp_path_factory.mktemp("redis"), maxmemory_bytes=BUDGET, password=PASSWORD)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def llm(model_dir, redis_srv):
    from vllm import LLM

    from workers.kv.config import redis_kv_transfer_config

    cfg = redis_kv_transfer_config(redis_srv.url, "reader", model_id="smollm2-135m", retry_after_s=0.5)
    # Engine core in this process (connector counters readable), 1 GiB KV cache; restored
    # afterwards so other test files' engines are unaffected.
    saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        engine = LLM(model_dir, **engine_kwargs(cfg))
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


@pytest.fixture(scope="module")
def tok(llm):
    return llm.get_tokenizer()


@pytest.fixture(scope="module")
def prefix_ids(tok) -> list[int]:
    """5 exemplars of GSM8K: a few-shot prefix of 4+ full 128-token blocks."""
    rows = [json.loads(l) for l in (GSM8K / "train.jsonl").read_text().splitlines()[:5]]
    text = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows)
    ids = tok.encode(text)
    assert len(ids) >= 4 * 128, len(ids)
    return ids


def questions(tok, n: int, start: int = 0) -> list[list[int]]:
    rows = [json.loads(l) for l in (GSM8K / "test.jsonl").read_text().splitlines()[start:start + n]]
    return [tok.encode(f"Question: {r['question']}\nAnswer:", add_special_tokens=False) for r in rows]


def greedy(n=32, logprobs=5):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0, logprobs=logprobs)


def cold(llm, conn, prompts, sp):
    """Reference run: no Redis loads, empty local prefix cache."""
    sched, _ = conn
    llm.reset_prefix_cache()
    sched.settings.load, sched.settings.save = False, False
    try:
        return llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    finally:
        sched.settings.load, sched.settings.save = True, True
        llm.reset_prefix_cache()


def assert_same(outs, refs, tol=1e-4):
    for o, r in zip(outs, refs, strict=True):
        assert list(o.outputs[0].token_ids) == list(r.outputs[0].token_ids)
        for a, b in zip(o.outputs[0].logprobs, r.outputs[0].logprobs, strict=True):
            for t, lp in b.items():
                assert t in a, "top-k set changed"
                assert abs(a[t].logprob - lp.logprob) <= tol, (t, a[t].logprob, lp.logprob)


def test_prefix_written_by_another_process_gives_cold_run_tokens(llm, conn, tok, prefix_ids, redis_srv, model_dir, tmp_path):
    sched, worker = conn
    q_writer, q_reader = questions(tok, 2)
    pf = tmp_path / "prompts.json"
    pf.write_text(json.dumps([prefix_ids + q_writer]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    p = subprocess.run([sys.executable, __file__, model_dir, redis_srv.url, str(pf)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    wstats = json.loads(p.stdout.split("WRITER_STATS", 1)[1].strip().splitlines()[0])
    full = len(prefix_ids + q_writer) // 128
    assert wstats["saved_blocks"] == full and wstats["errors"] == 0

    prompt = prefix_ids + q_reader
    shared_blocks = len(prefix_ids) // 128
    before = worker.stats()["loaded_blocks"]
    llm.reset_prefix_cache()
    warm = llm.generate([{"prompt_token_ids": prompt}], greedy(), use_tqdm=False)
    loaded = worker.stats()["loaded_blocks"] - before
    assert loaded == shared_blocks  # the whole shared prefix, nothing past the divergence
    assert warm[0].kv_transfer_params == {"remote_cached_prompt_tokens": shared_blocks * 128}
    assert warm[0].num_cached_tokens == shared_blocks * 128

    ref = cold(llm, conn, [prompt], greedy())
    assert ref[0].num_cached_tokens == 0 and ref[0].kv_transfer_params == {"remote_cached_prompt_tokens": 0}
    assert_same(warm, ref)


def test_corrupted_and_truncated_blocks_are_skipped_never_loaded(llm, conn, tok, prefix_ids, redis_srv):
    from workers.kv.keys import block_hashes, kv_key

    sched, worker = conn
    prompt = prefix_ids + questions(tok, 1, start=5)[0]
    keys = [kv_key(worker.ns, h) for h in block_hashes(prefix_ids, worker.ns)]
    r = redis_srv.client()
    assert all(r.exists(k) for k in keys[:4]), "previous test should have left the prefix in Redis"
    good = r.get(keys[2])
    r.setrange(keys[2], len(good) - 1000, b"\x00garbage\xff")  # corrupt the payload, same length
    r.set(keys[3], r.get(keys[3])[:-4096])  # truncate
    s0 = worker.stats()
    llm.reset_prefix_cache()
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(8), use_tqdm=False)
    s1 = worker.stats()
    assert s1["corrupt_blocks"] - s0["corrupt_blocks"] == 1
    assert s1["loaded_blocks"] - s0["loaded_blocks"] == 2  # blocks 0 and 1 only
    assert s1["load_failed_blocks"] - s0["load_failed_blocks"] == len(prefix_ids) // 128 - 2
    assert worker.flush(10) and not r.exists(keys[2])  # the corrupt value was deleted
    assert_same(out, cold(llm, conn, [prompt], greedy(8)))


def test_redis_stopped_mid_run_loses_nothing(llm, conn, tok, prefix_ids, redis_srv):
    sched, worker = conn
    prompts = [prefix_ids + q for q in questions(tok, 2, start=10)]
    sp = greedy(n=8, logprobs=1)
    refs = cold(llm, conn, prompts, sp)
    # seed Redis with the shared prefix, then lose Redis while a batch runs
    llm.generate([{"prompt_token_ids": prompts[0]}], greedy(1), use_tqdm=False)
    assert worker.flush(30)
    llm.reset_prefix_cache()
    errors0 = sched.stats()["errors"] + worker.stats()["errors"]
    stopper = threading.Timer(0.3, redis_srv.stop)
    stopper.start()
    try:
        during = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        stopper.join()
        llm.reset_prefix_cache()
        after = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)  # Redis down throughout
        assert worker.flush(30)
    finally:
        stopper.cancel()
        redis_srv.start()
    assert_same(during, refs, tol=1e-4)
    assert_same(after, refs, tol=1e-4)
    assert all(o.kv_transfer_params["remote_cached_prompt_tokens"] == 0 for o in after)
    assert sched.stats()["errors"] + worker.stats()["errors"] > errors0
    # back up (empty): the connector recovers within retry_after_s and saves again
    time.sleep(0.6)
    saved0 = worker.stats()["saved_blocks"]
    llm.reset_prefix_cache()
    llm.generate([{"prompt_token_ids": prompts[1]}], greedy(1), use_tqdm=False)
    assert worker.flush(30)
    assert worker.stats()["saved_blocks"] > saved0


def _seed(llm, conn, prompt, salt=None):
    """Run `prompt` once (writes its full blocks to Redis), wait for the writes, empty the local cache."""
    sched, worker = conn
    p = {"prompt_token_ids": prompt} if salt is None else {"prompt_token_ids": prompt, "cache_salt": salt}
    llm.generate([p], greedy(1), use_tqdm=False)
    assert worker.flush(30) and sched.flush(30)
    llm.reset_prefix_cache()


def test_forged_block_is_rejected_counted_and_output_equals_cold(llm, conn, tok, prefix_ids, redis_srv):
    """Anyone who can write to Redis can build a well-formed block (today's format: a CRC anyone can
    compute); without the deployment's MAC key it is never loaded."""
    import torch

    from workers.kv import codec
    from workers.kv.keys import block_hashes, kv_key

    sched, worker = conn
    prompt = prefix_ids + questions(tok, 1, start=20)[0]
    _seed(llm, conn, prompt)
    keys = [kv_key(worker.ns, h) for h in block_hashes(prefix_ids, worker.ns)]
    r = redis_srv.client()
    assert all(r.exists(k) for k in keys)
    real = codec.decode(r.get(keys[1]), keys[1], MAC_KEY.encode())
    # the attacker's block: right header, dtype, shape and length; its MAC made with a key of its own
    forged = codec.encode(torch.full_like(real, 3.0), keys[1], b"the-attacker-does-not-have-the-key")
    r.set(keys[1], forged, ex=600)
    ref = cold(llm, conn, [prompt], greedy(16))
    s0 = worker.stats()
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(16), use_tqdm=False)
    s1 = worker.stats()
    assert s1["mac_failures"] - s0["mac_failures"] == 1 and s1["corrupt_blocks"] - s0["corrupt_blocks"] == 1
    assert s1["loaded_blocks"] - s0["loaded_blocks"] == 1  # block 0 only: the chain stops at the forgery
    assert_same(out, ref)
    assert worker.flush(10) and r.get(keys[1]) != forged  # deleted (then saved again, genuine)

    # a genuine block of another position, copied under this key: its MAC binds it to its own key
    _seed(llm, conn, prompt)
    r.set(keys[1], r.get(keys[2]), ex=600)
    s0 = worker.stats()
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(16), use_tqdm=False)
    s1 = worker.stats()
    assert s1["mac_failures"] - s0["mac_failures"] == 1 and s1["loaded_blocks"] - s0["loaded_blocks"] == 1
    assert_same(out, ref)


def test_without_the_password_redis_refuses_and_the_connector_degrades_to_misses(llm, conn, tok, prefix_ids, redis_srv):
    import redis as redis_py

    from workers.kv.store import StoreConfig, redis_client

    sched, worker = conn
    anon = redis_py.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=2)
    with pytest.raises(redis_py.AuthenticationError):
        anon.get(b"anything")
    wrong = redis_py.Redis(host="127.0.0.1", port=redis_srv.port, password="not-the-password", socket_timeout=2)
    with pytest.raises(redis_py.AuthenticationError):
        wrong.get(b"anything")

    prompt = prefix_ids + questions(tok, 1, start=30)[0]
    _seed(llm, conn, prompt)
    ref = cold(llm, conn, [prompt], greedy(16))
    clients = sched.store.client, worker.store.client
    e0 = sched.stats()["errors"] + worker.stats()["errors"]
    sched.store.client = redis_client(StoreConfig(url=redis_srv.url))  # no password
    worker.store.client = redis_client(StoreConfig(url=redis_srv.url, password="not-the-password"))
    try:
        out = llm.generate([{"prompt_token_ids": prompt}], greedy(16), use_tqdm=False)
        assert worker.flush(30) and sched.flush(30)
    finally:
        sched.store.client, worker.store.client = clients
        sched.store._down_until = worker.store._down_until = 0.0
    assert out[0].kv_transfer_params == {"remote_cached_prompt_tokens": 0} and out[0].num_cached_tokens == 0
    assert sched.stats()["errors"] + worker.stats()["errors"] > e0
    assert_same(out, ref)


def test_a_salted_tenants_prefix_gives_another_tenant_no_cached_tokens(llm, conn, tok, prefix_ids, redis_srv):
    sched, worker = conn
    prompt = prefix_ids + questions(tok, 1, start=40)[0]
    full = (len(prompt) - 1) // 128 * 128  # every block Redis may serve (vLLM computes >= 1 prompt token)

    def run(salt, save=True):
        p = {"prompt_token_ids": prompt} if salt is None else {"prompt_token_ids": prompt, "cache_salt": salt}
        sched.settings.save = save  # B's and C's own blocks would only crowd A's out of the 96 MiB budget
        try:
            return llm.generate([p], greedy(8), use_tqdm=False)[0]
        finally:
            sched.settings.save = True

    redis_srv.client().flushdb()
    llm.reset_prefix_cache()
    a = run("tenant-a")
    assert worker.flush(30) and sched.flush(30)
    # right after A: A's blocks are in this engine's prefix cache and in Redis; B sees neither
    b = run("tenant-b", save=False)
    assert b.num_cached_tokens == 0 and b.kv_transfer_params == {"remote_cached_prompt_tokens": 0}
    llm.reset_prefix_cache()
    c = run("tenant-c", save=False)  # Redis only (local cache empty): still nothing
    assert c.num_cached_tokens == 0 and c.kv_transfer_params == {"remote_cached_prompt_tokens": 0}
    u = run(None, save=False)  # nor for requests without a salt
    assert u.num_cached_tokens == 0 and u.kv_transfer_params == {"remote_cached_prompt_tokens": 0}
    llm.reset_prefix_cache()
    a2 = run("tenant-a")  # A's own prefix still serves A, from Redis
    assert a2.kv_transfer_params == {"remote_cached_prompt_tokens": full} and a2.num_cached_tokens == full
    for o in (a2, b, c, u):
        assert_same([o], [a])


def test_value_namespace_follows_the_weights_fingerprint(llm, conn, tok, prefix_ids, model_dir):
    from dataclasses import replace

    from workers.convert import weights_fingerprint

    sched, worker = conn
    fp = weights_fingerprint(model_dir)
    assert sched.ns.weights == worker.ns.weights == fp and len(fp) == 16 and worker.ns.tp_rank == 0
    prompt = prefix_ids + questions(tok, 1, start=50)[0]
    _seed(llm, conn, prompt)
    saved = sched.ns, sched.rank_ns, worker.ns
    upgraded = replace(sched.ns, weights="0" * 16)  # the same model name after an upgrade of its weights
    sched.ns, sched.rank_ns, worker.ns = upgraded, [upgraded], replace(worker.ns, weights="0" * 16)
    try:
        out = llm.generate([{"prompt_token_ids": prompt}], greedy(1), use_tqdm=False)
    finally:
        sched.ns, sched.rank_ns, worker.ns = saved
        llm.reset_prefix_cache()
    assert out[0].kv_transfer_params == {"remote_cached_prompt_tokens": 0}
    again = llm.generate([{"prompt_token_ids": prompt}], greedy(1), use_tqdm=False)
    assert again[0].kv_transfer_params == {"remote_cached_prompt_tokens": (len(prompt) - 1) // 128 * 128}


def test_stream_of_distinct_prefixes_stays_within_budget(llm, conn, tok, redis_srv):
    sched, worker = conn
    r = redis_srv.client()
    rows = [json.loads(l) for l in (GSM8K / "train.jsonl").read_text().splitlines()[100:400]]
    prompts, i = [], 0
    for k in range(6):  # 6 distinct ~4-block prompts: ~24 blocks * 5.9 MB > 96 MB budget
        ids: list[int] = []
        while len(ids) < 4 * 128 + 10:
            ids += tok.encode(f"Question: {rows[i]['question']}\nAnswer: {rows[i]['answer']}\n\n", add_special_tokens=False)
            i += 1
        prompts.append(ids[:4 * 128 + 10])
    before = r.info("stats")["evicted_keys"]
    llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(1), use_tqdm=False)
    assert worker.flush(60) and sched.flush(30)
    mem = r.info("memory")
    assert mem["used_memory"] <= BUDGET, mem["used_memory_human"]
    assert r.info("stats")["evicted_keys"] > before
    # TTLs on every block and index entry
    some = list(r.scan_iter(match="trkv*", count=1000))[:20]
    assert some and all(0 < r.ttl(k) <= 3600 for k in some)
    # no per-request state left behind in the worker or scheduler
    assert worker.stats()["pending_save_bytes"] == 0
    assert not sched._lookups and not sched._remote_tokens


@pytest.fixture
def own_redis(tmp_path):
    from router.redis_server import RedisServer, free_port

    srv = RedisServer(free_port(), tmp_path / "r", maxmemory_bytes=16 << 20, password=PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def test_store_treats_a_dead_redis_as_a_miss_and_logs_once(own_redis, caplog):
    from workers.kv.store import RedisStore, StoreConfig

    st = RedisStore(StoreConfig(url=own_redis.url, password_env="THINKROUTE_REDIS_PASSWORD", retry_after_s=0.2,
                                connect_timeout_s=0.2))
    assert st.set_many([(b"k1", b"v1"), (b"k2", b"v2")]) and st.count_leading([b"k1", b"k2", b"k3"]) == 2
    own_redis.stop()
    with caplog.at_level("WARNING", logger="workers.kv.store"):
        t0 = time.monotonic()
        for _ in range(3):
            assert st.count_leading([b"k1"]) == 0
            assert st.mget([b"k1", b"k2"]) == [None, None]
            assert st.set_many([(b"k3", b"v")]) is False
            time.sleep(0.25)
        assert time.monotonic() - t0 < 3  # no long connect timeouts per call
        assert st.stats.errors >= 2 and st.stats.skipped_open_circuit >= 2
        assert sum("unavailable" in r.message for r in caplog.records) == 1
        own_redis.start()
        time.sleep(0.25)
        assert st.set_many([(b"k4", b"v4")]) and st.mget([b"k4"]) == [b"v4"]
        assert sum("reachable again" in r.message for r in caplog.records) == 1


def test_store_treats_a_slow_redis_as_a_miss(own_redis):
    from workers.kv.store import RedisStore, StoreConfig

    st = RedisStore(StoreConfig(url=own_redis.url, password_env="THINKROUTE_REDIS_PASSWORD", socket_timeout_s=0.3,
                                retry_after_s=5))
    assert st.set_many([(b"k1", b"v1")])
    own_redis.client().execute_command("CLIENT", "PAUSE", 2000, "ALL")
    t0 = time.monotonic()
    assert st.mget([b"k1"]) == [None]
    assert st.count_leading([b"k1"]) == 0  # circuit open: answered without waiting
    assert time.monotonic() - t0 < 1.0 and st.stats.errors == 1


def test_store_over_tls_with_auth_and_what_is_refused(tmp_path):
    """redis-server 7.0 from Debian/Ubuntu is built with TLS: a TLS-only port with requirepass. Clients
    with the password and the CA work; plaintext, an untrusted certificate or no password are misses."""
    from router.redis_server import RedisServer, free_port, self_signed_tls
    from workers.kv.store import RedisStore, StoreConfig

    tls = self_signed_tls(tmp_path / "tls")
    with RedisServer(free_port(), tmp_path / "r", maxmemory_bytes=16 << 20, password=PASSWORD, tls=tls) as srv:
        assert srv.url.startswith("rediss://")
        ok = RedisStore(StoreConfig(url=srv.url, password_env="THINKROUTE_REDIS_PASSWORD", tls_ca_file=tls.ca_file))
        assert ok.set_many([(b"k", b"v")]) and ok.mget([b"k"]) == [b"v"]
        plain_url = srv.url.replace("rediss://", "redis://")
        refused = [
            StoreConfig(url=plain_url, password_env="THINKROUTE_REDIS_PASSWORD"),  # no TLS
            StoreConfig(url=srv.url, password_env="THINKROUTE_REDIS_PASSWORD"),  # server cert not trusted
            StoreConfig(url=srv.url, tls_ca_file=tls.ca_file),  # no password
        ]
        for cfg in refused:
            st = RedisStore(cfg)
            assert st.mget([b"k"]) == [None] and st.count_leading([b"k"]) == 0 and st.stats.errors == 1
        # the same through `tls: true` on a redis:// URL
        forced = RedisStore(StoreConfig(url=plain_url, tls=True, tls_ca_file=tls.ca_file, password_env="THINKROUTE_REDIS_PASSWORD"))
        assert forced.mget([b"k"]) == [b"v"]


def test_index_feeds_the_scorer_with_real_redis(own_redis):
    from router.scorers.prefix import PrefixAffinityScorer
    from workers.kv.index import PrefixIndex
    from workers.kv.keys import Namespace, block_hashes, index_key
    from workers.kv.store import RedisStore, StoreConfig

    ns = Namespace(model_id="smollm2-135m", dtype="float32", block_size=128, layout="cpu:blocks-first")
    now = [1_000_000.0]
    idx = PrefixIndex(RedisStore(StoreConfig(url=own_redis.url, password_env="THINKROUTE_REDIS_PASSWORD")), ns,
                      warm_ttl_s=60, wall_clock=lambda: now[0])
    shared = list(range(1000, 1000 + 128 * 6))
    idx.record("a", block_hashes(shared, ns))
    idx.record("b", block_hashes(shared[:256], ns))
    h = block_hashes(shared + [5] * 200, ns)
    assert idx.longest_warm_prefix(h) == {"a": 6, "b": 2}
    scorer = PrefixAffinityScorer(idx, ns)
    scores = scorer.score(["a", "b"], shared + [5] * 200, {"a": 2, "b": 1})
    assert max(scores, key=scores.get) == "a"
    busy = scorer.score(["a", "b"], shared, {"a": 30, "b": 3})
    assert max(busy, key=busy.get) == "b"
    now[0] += 61  # entries age out: nobody is warm
    assert idx.longest_warm_prefix(h) == {}
    assert 0 < own_redis.client().ttl(index_key(ns, h[0])) <= 60


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    _writer_main(*sys.argv[1:4])
