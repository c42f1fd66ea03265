"""The replay deployment end to end: real `thinkroute worker --backend replay` processes behind the real
router on Ray Serve (gRPC and HTTP proxies), configured by the shipped router/configs/replay_gsm8k_6sys.yaml
(two of its six replay pools, to keep the test short) with the real SmolLM2 drafter on vLLM; and `thinkroute
collect` on three dev questions through that deployment.
Marked slow: 2.8 min alone on a shared 2-core machine (5 tests: the shared workers and Ray Serve start in 91 s,
teardown 48 s; the tests themselves 13 s), 7.5 min when the machine was busier."""
from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc
from thinkroute.v1 import worker_pb2 as wpb
from thinkroute.v1 import worker_pb2_grpc as wpb_grpc

from tests.conftest import REPO, free_port, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = REPO / "router" / "configs" / "replay_gsm8k_6sys.yaml"
DATA = REPO.parent / "shared" / "data" / "routing" / "gsm8k_6sys_outcomes.dev.jsonl"
KEEP = ("6b_finetuning", "gpt4_1106_preview")
MD = [("application", "thinkroute")]


def _rows(n: int = 3) -> list[dict]:
    with DATA.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.fixture(scope="module")
def replay_workers(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("replay")
    handles = {s: start_worker(f"{s}@replay", "replay", log_dir, "--replay-file", str(DATA),
                               "--tokens-per-s", "400", "--ttft-ms", "20") for s in KEEP}
    try:
        yield {s: h.wait_ready(180) for s, h in handles.items()}
    finally:
        for h in handles.values():
            h.stop(timeout=20)


@pytest.fixture(scope="module")
def replay_config():
    """The shipped replay config, cut to the two replay pools started here (plus the drafter)."""
    import yaml

    from router.config import Config

    raw = yaml.safe_load(CONFIG.read_text())
    raw["models"] = {k: v for k, v in raw["models"].items() if k in (*KEEP, "smollm2-135m")}
    for section in ("candidates", "priors", "prices"):
        raw["policy"][section] = {k: v for k, v in raw["policy"][section].items() if k in KEEP}
    raw["router"]["request_timeout_s"] = 60
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def replay_router(replay_workers, replay_config, smollm2_vllm):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.serve_app import ROUTER_SERVICER, build_app

    grpc_port, http_port = free_port(), free_port()
    addresses = {s: [h.address] for s, h in replay_workers.items()}
    addresses["smollm2-135m"] = [smollm2_vllm.address]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    serve.run(build_app(replay_config, addresses), name="thinkroute", route_prefix="/")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield rpb_grpc.RouterStub(channel), f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


def test_worker_rpcs(replay_workers, smollm2_dir):
    from transformers import AutoTokenizer

    w = replay_workers["gpt4_1106_preview"]
    stub = wpb_grpc.WorkerStub(grpc.insecure_channel(w.address))
    info = stub.Info(wpb.InfoRequest(), timeout=10)
    assert info.model_id == "gpt4_1106_preview@replay" and info.backend == "replay" and info.num_layers == 0
    tok = stub.Tokenize(wpb.TokenizeRequest(prompt=wpb.Prompt(text="hello world")), timeout=10)
    assert list(tok.token_ids) == AutoTokenizer.from_pretrained(smollm2_dir).encode("hello world")
    for call in (lambda: stub.Score(wpb.ScoreRequest(prompt=wpb.Prompt(text="hi")), timeout=10),
                 lambda: stub.HiddenState(wpb.HiddenStateRequest(prompts=[wpb.Prompt(text="hi")], layers=[2]), timeout=10)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "replay" in e.value.details()


def test_router_answers_a_dev_question_with_the_recorded_text(replay_router, smollm2_dir):
    from transformers import AutoTokenizer

    stub = replay_router[0]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    row = _rows(1)[0]
    for system in KEEP:
        resp = stub.Generate(rpb.RouteRequest(query=row["question"], model=system, max_tokens=512), metadata=MD, timeout=60)
        solution = row[system]["solution"]
        assert resp.text == solution
        call = resp.trace.calls[0]
        assert call.model == system and call.generated_tokens == len(tokenizer.encode(solution))
        # The rendered prompt (plain text: "Question: ...\nAnswer:") counted by the same tokenizer.
        assert call.prompt_tokens == len(tokenizer.encode(f"Question: {row['question']}\nAnswer:"))
    # Streaming, and whitespace differences in the question still match the record.
    parts = list(stub.GenerateStream(rpb.RouteRequest(query="  " + row["question"].replace(" ", "  ") + "\n",
                                                      model="gpt4_1106_preview", max_tokens=512), metadata=MD, timeout=60))
    deltas = "".join(p.text_delta for p in parts if p.text_delta)
    assert deltas == row["gpt4_1106_preview"]["solution"] and len([p for p in parts if p.text_delta]) > 10


def test_policy_picks_by_dial_among_replay_pools(replay_router):
    stub = replay_router[0]
    row = _rows(2)[1]
    cheap = stub.Generate(rpb.RouteRequest(query=row["question"], dial=0.0, max_tokens=512), metadata=MD, timeout=60)
    best = stub.Generate(rpb.RouteRequest(query=row["question"], dial=1.0, max_tokens=512), metadata=MD, timeout=60)
    assert cheap.trace.plan.models["model"] == "6b_finetuning" and cheap.text == row["6b_finetuning"]["solution"]
    assert best.trace.plan.models["model"] == "gpt4_1106_preview" and best.text == row["gpt4_1106_preview"]["solution"]


def test_unknown_prompt_is_not_found_on_both_ingresses(replay_router):
    import httpx

    stub, base, _ = replay_router
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(rpb.RouteRequest(query="What is the capital of nowhere?", model="gpt4_1106_preview", max_tokens=32),
                      metadata=MD, timeout=60)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no recorded answer" in e.value.details()
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
        "model": "gpt4_1106_preview", "max_tokens": 32,
        "messages": [{"role": "user", "content": "What is the capital of nowhere?"}]})
    assert r.status_code == 404, r.text
    assert "no recorded answer" in r.json()["error"]["message"]


def test_collect_through_the_replay_deployment(replay_router, replay_config, tmp_path):
    """`thinkroute collect` on three dev questions, both plans: graded rows equal to the recorded labels, tokens
    from the trace, costs from the config's prices; a second run is a no-op (resume); route-eval's loader reads it."""
    import subprocess
    import sys

    import yaml

    from router.policy.evaluate import load_config as load_eval_config
    from router.policy.evaluate import load_outcomes

    rows = _rows(3)
    data = tmp_path / "dev3.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg_path = tmp_path / "replay2.yaml"
    cfg_path.write_text(yaml.safe_dump(replay_config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    out = tmp_path / "collected.jsonl"
    cmd = [sys.executable, "-m", "router.cli", "collect", "--data", str(data), "--config", str(cfg_path), "--out", str(out),
           "--grader", "numeric", "--router", replay_router[2], "--no-progress", "--timeout", "60"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "6b_finetuning" in first.stdout and "accuracy" in first.stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 3
    by_q = {r["question"]: r for r in rows}
    for row in got:
        src = by_q[row["question"]]
        for s in KEEP:
            rec = row[s]
            assert rec["solution"] == src[s]["solution"] and rec["is_correct"] == src[s]["is_correct"]
            assert rec["tokens"][s] > 0 and rec["prompt_tokens"] > 0 and rec["cost"] > 0 and rec["latency_ms"] > 0
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert second.returncode == 0 and "3 already done" in second.stdout and len(out.read_text().splitlines()) == 3
    ecfg = load_eval_config(REPO / "router" / "configs" / "routing" / "gsm8k_6sys.yaml")
    ecfg.systems = {s: ecfg.systems[s] for s in KEEP}
    outcomes = load_outcomes(ecfg, str(out))
    assert outcomes.correct.shape == (3, 2)
