"""Feedback end to end on real processes: two `thinkroute worker --backend replay` workers (recorded GSM8K
answers of 6b_finetuning and GPT-4), a real password-protected `redis-server` holding the decision log, and the
router core with its OpenAI HTTP app (in process; the Ray Serve wrapper is covered by the other integration tests).

Negative feedback on the plan the policy chooses for task T (over POST /v1/feedback) makes the policy stop choosing
it for T after a stated number of feedbacks (3 with the default prior_var: P 0.9 -> 0.33 < the
6b plan's 0.4; the test allows at most 8), other tasks keep it, and a restarted router (a new
core, same Redis) routes T as it had learned. 22 s on 2 cores (two replay workers start)."""
from __future__ import annotations

import json
import secrets

import pytest
from starlette.testclient import TestClient

from tests.conftest import REPO, free_port, start_worker

pytestmark = pytest.mark.integration

DATA = REPO.parent / "shared" / "data" / "routing" / "gsm8k_6sys_outcomes.dev.jsonl"
KEEP = ("6b_finetuning", "gpt4_1106_preview")
#: Stated bound: negative feedbacks on the chosen plan for one task before the policy stops choosing it.
MAX_FEEDBACKS = 8
LOCAL = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def replay_workers(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("replay-fb")
    handles = {s: start_worker(f"{s}@replay", "replay", log_dir, "--replay-file", str(DATA),
                               "--tokens-per-s", "0", "--ttft-ms", "0") for s in KEEP}
    try:
        yield {s: h.wait_ready(180) for s, h in handles.items()}
    finally:
        for h in handles.values():
            h.stop(timeout=20)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, monkeypatch_module):
    from router.redis_server import RedisServer

    password = secrets.token_hex(16)
    monkeypatch_module.setenv("THINKROUTE_FB_TEST_REDIS_PASSWORD", password)
    with RedisServer(port=free_port(), data_dir=tmp_path_factory.mktemp("redis-fb"), maxmemory_bytes=64 << 20,
                     password=password) as r:
        yield r


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def config(redis_server):
    from router.config import Config

    raw = {
        "models": {s: {"model": f"{s}@replay", "backend": "replay", "replicas": 0, "addresses": ["127.0.0.1:1"]}
                   for s in KEEP},
        "router": {"default_model": "gpt4_1106_preview", "roles": {"small": "6b_finetuning", "large": "gpt4_1106_preview"},
                   "max_tokens": 512, "request_timeout_s": 60},
        "redis": {"url": redis_server.url, "password_env": "THINKROUTE_FB_TEST_REDIS_PASSWORD"},
        "dial": {"default": 1.0},
        "policy": {
            "drafter_role": "small",
            "prices": {"6b_finetuning": 6.0, "gpt4_1106_preview": {"in": 10.0, "out": 30.0}},
            "candidates": {s: {"strategy": "direct", "model": s} for s in KEEP},
            "priors": {"6b_finetuning": {"p_correct": 0.4, "tokens": {"6b_finetuning": 120}},
                       "gpt4_1106_preview": {"p_correct": 0.9, "tokens": {"gpt4_1106_preview": 200}}},
            "feedback": {"store": "redis"},  # default prior_var 0.5: three negatives move 0.9 below 0.4
        },
    }
    for m in raw["models"].values():  # replay pools need their file in the engine config
        m["replay"] = {"file": str(DATA)}
    return Config.model_validate(raw)


def _questions(n):
    with DATA.open() as f:
        return [json.loads(next(f))["question"] for _ in range(n)]


def _client(config, replay_workers):
    from router.http_api import OpenAIFrontend, build_http_app
    from router.policy.planning import PlanningPolicy
    from router.service import RouterCore

    core = RouterCore(config, {s: [h.address] for s, h in replay_workers.items()}, policy=PlanningPolicy(config))
    return core, TestClient(build_http_app(OpenAIFrontend(core, config, {})), client=LOCAL)


def _ask(client, question, task):
    r = client.post("/v1/chat/completions", json={
        "model": "thinkroute", "max_tokens": 512, "messages": [{"role": "user", "content": question}],
        "thinkroute": {"task": task, "trace": True}})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"], r.json()


def test_negative_feedback_moves_the_task_off_the_plan_and_survives_a_restart(config, replay_workers):
    qs = _questions(MAX_FEEDBACKS + 4)
    core, tc = _client(config, replay_workers)
    with tc as client:  # one event loop for the core's gRPC channels and Redis client
        _learn(client, qs)
        client.portal.call(core.close)
    # Restart: a new router core on the same Redis replays the outcomes before its first plan.
    core2, tc2 = _client(config, replay_workers)
    with tc2 as client2:
        assert _ask(client2, qs[1], "T")[1]["model"] == "6b_finetuning"
        assert _ask(client2, qs[1], "U")[1]["model"] == "gpt4_1106_preview"
        client2.portal.call(core2.close)


def _learn(client, qs):
    rid, body = _ask(client, qs[0], "T")
    chosen = body["model"]
    assert chosen == "gpt4_1106_preview"  # dial 1: the best prior
    n = 0
    for q in qs[1:]:
        out = client.post("/v1/feedback", json={"request_id": rid, "correct": False})
        assert out.status_code == 200, out.text
        assert out.json()["plan"] == "gpt4_1106_preview" and out.json()["task"] == "T"
        n += 1
        rid, body = _ask(client, q, "T")
        if body["model"] != chosen:
            break
    assert body["model"] == "6b_finetuning", f"still {body['model']} after {n} negative feedbacks"
    assert n <= MAX_FEEDBACKS
    print(f"policy stopped choosing {chosen} for task T after {n} negative feedbacks")
    # Another task is untouched; an unknown id is a clear 404.
    assert _ask(client, qs[0], "U")[1]["model"] == chosen
    missing = client.post("/v1/feedback", json={"request_id": "no-such-request", "correct": True})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
