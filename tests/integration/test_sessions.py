"""Session stickiness, measured: a 10-turn agent conversation over 2 real vLLM replicas of the drafter.

tests/configs/two_drafters.yaml: two `thinkroute worker` processes of SmolLM2-135M (vLLM, no Redis
KV connector, so each replica has only its own prefix cache) behind real Ray Serve. Two router
apps share those workers: `/sticky` is the config as it is (scorers load + session); `/spread` is
the same config without the `session` scorer (session affinity off). Each conversation grows by
one model answer and one ~150-token tool observation per turn, as an agent's tool loop does; the
trace of every turn says which replica served it and how many prompt tokens its prefix cache held.

Run with `-s` to see the per-turn table (also written to runs/sessions/turns.json).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import openai
import pytest

from tests.conftest import REPO, free_port, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # run by `ops/test.sh tests`

CONFIG = REPO / "tests" / "configs" / "two_drafters.yaml"
TURNS = 10
BLOCK = 128  # vLLM's CPU KV block: cached prompt tokens come in whole blocks


@pytest.fixture(scope="module")
def two_drafters(tmp_path_factory):
    """Two SmolLM2 vLLM workers (the config's engine settings), Ray Serve apps /sticky and /spread."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from router.config import load_config
    from router.serve_app import build_app

    config = load_config(CONFIG)
    pool = config.models["smollm2-135m"]
    engine = json.dumps(pool.engine_dict())
    log_dir = tmp_path_factory.mktemp("two-drafters")
    workers = [start_worker("smollm2-135m", "vllm", log_dir, "--config-json", engine) for _ in range(pool.replicas)]
    try:
        for w in workers:
            w.wait_ready()
        addresses = {"smollm2-135m": [w.address for w in workers]}
        spread = load_config(CONFIG, overrides={"router.scorers": [{"name": "load", "weight": 1.0}]})
        http_port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port))
        serve.run(build_app(config, addresses), name="sticky", route_prefix="/sticky")
        serve.run(build_app(spread, addresses), name="spread", route_prefix="/spread")
        yield {"base": f"http://127.0.0.1:{http_port}", "replicas": addresses["smollm2-135m"]}
    finally:
        try:
            import ray as _ray

            if _ray.is_initialized():
                serve.shutdown()
                _ray.shutdown()
        finally:
            for w in workers:
                w.stop(timeout=30)


def observation(run: str, turn: int) -> str:
    """A tool result of about 150 tokens, different per run and turn (so runs share no prefix)."""
    rows = "; ".join(f"{run} station {turn}-{i}: temperature {10 + (turn * 7 + i) % 20} C, wind {3 + i} km/h, "
                     f"humidity {40 + (turn + i * 3) % 50} %" for i in range(6))
    return f"Observation {turn} from the weather tool: {rows}. Summarise it in one sentence."


def run_conversation(client: openai.OpenAI, run: str, headers: dict[str, str] | None = None) -> list[dict]:
    """TURNS turns of one growing conversation; per turn: the replica, prompt and cached prompt tokens."""
    messages = [{"role": "system", "content": f"You are weather agent {run}. Answer in one short sentence."},
                {"role": "user", "content": f"Task {run}: report the weather at every station, one observation "
                                            "at a time."}]
    turns = []
    for turn in range(1, TURNS + 1):
        messages.append({"role": "user", "content": observation(run, turn)})
        resp = client.chat.completions.create(model="thinkroute", messages=messages, max_tokens=16, temperature=0,
                                              extra_body={"thinkroute": {"trace": True}}, extra_headers=headers)
        trace = resp.model_extra["thinkroute_trace"]
        (call,) = [c for c in trace["calls"] if c["kind"] == "generate"]
        turns.append({"turn": turn, "replica": call["replica"], "prompt_tokens": call["prompt_tokens"],
                      "cached_prompt_tokens": call["cached_prompt_tokens"], "session": trace["plan"]["session"],
                      "latency_ms": round(call["latency_ms"], 1)})
        messages.append({"role": "assistant", "content": resp.choices[0].message.content or ""})
    return turns


def _client(stack, app: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['base']}/{app}/v1", api_key="unused-on-loopback", max_retries=0,
                         timeout=120)


def _report(name: str, turns: list[dict]) -> None:
    print(f"\n{name}: turn replica prompt_tokens cached_prompt_tokens latency_ms")
    for t in turns:
        print(f"  {t['turn']:>2} {t['replica']} {t['prompt_tokens']:>5} {t['cached_prompt_tokens']:>5} {t['latency_ms']:>8}")
    out = REPO / "runs" / "sessions"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "turns.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = turns
    path.write_text(json.dumps(data, indent=1))


def test_a_session_stays_on_one_replica_and_its_cached_prefix_grows_every_turn(two_drafters):
    turns = run_conversation(_client(two_drafters, "sticky"), "A")
    _report("session affinity on (default key: hash of the first messages)", turns)
    assert len({t["replica"] for t in turns}) == 1, turns
    assert len({t["session"] for t in turns}) == 1 and turns[0]["session"].startswith("conv-")
    cached = [t["cached_prompt_tokens"] for t in turns]
    assert all(later > earlier for earlier, later in zip(cached[1:], cached[2:])), cached  # rises turn after turn
    # from turn 2 on, the cache holds every whole block of the previous turn's prompt
    for prev, cur in zip(turns, turns[1:]):
        assert cur["cached_prompt_tokens"] >= (prev["prompt_tokens"] // BLOCK) * BLOCK, (prev, cur)


def test_without_session_affinity_the_same_conversation_spreads_and_loses_its_cache(two_drafters):
    sticky = json.loads((REPO / "runs" / "sessions" / "turns.json").read_text()).get(
        "session affinity on (default key: hash of the first messages)")
    turns = run_conversation(_client(two_drafters, "spread"), "B")
    _report("session affinity off (scorers: load only)", turns)
    assert len({t["replica"] for t in turns}) == 2, turns  # random tie-break: all 10 on one has p = 2^-9
    assert all(t["session"] == "" for t in turns)
    if sticky:
        assert sum(t["cached_prompt_tokens"] for t in turns) < sum(t["cached_prompt_tokens"] for t in sticky)


def test_explicit_session_keys_each_keep_their_replica(two_drafters):
    from router.scorers.session import rendezvous_order

    client = _client(two_drafters, "sticky")
    replicas = two_drafters["replicas"]
    keys = {}  # one explicit key preferring each replica
    for i in range(64):
        keys.setdefault(rendezvous_order(f"agent-{i}", replicas)[0], f"agent-{i}")
        if len(keys) == len(replicas):
            break
    for replica, key in keys.items():
        seen = set()
        for turn in range(3):
            resp = client.chat.completions.create(
                model="thinkroute", messages=[{"role": "user", "content": f"Say hello {turn}."}], max_tokens=4,
                extra_body={"thinkroute": {"trace": True}}, extra_headers={"x-session-id": key})
            trace = resp.model_extra["thinkroute_trace"]
            assert trace["plan"]["session"] == key
            seen |= {c["replica"] for c in trace["calls"] if c["kind"] == "generate"}
        assert seen == {replica}, (key, seen)
