"""The documented learning loop on the embedded default, end to end on a small sample (docs/routing.md, "The
learning loop on the embedded default"): the embedded models on vLLM (the shared worker processes), the router on
Ray Serve (gRPC), the decision log in a real `redis-server`.

    serve (priors) -> ops/data/arith.py (6 questions) -> thinkroute collect (2 plans: drafter, reasoner)
    -> thinkroute train (drafter hidden states in-process) -> thinkroute policy reload -> requests planned by the
    probe -> feedback -> thinkroute train --from-log (the collected file + the decision log) -> reload again

The config is the embedded one with its candidates cut to the two `direct` plans (the loop takes every candidate
of the config it is given; two keep the sample small). Marked slow: 384 s on the 2-core machine at load ~15
(207 s starting the workers and Ray Serve, 104 s the sequence, 68 s teardown; measured with
`python -m pytest tests/integration/test_learning_loop.py -q --durations=5`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from thinkroute.v1 import router_pb2 as rpb
from thinkroute.v1 import router_pb2_grpc as rpb_grpc

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # run by `ops/test.sh tests`; duration in the docstring
ADMIN_TOKEN = "test-admin-token-not-a-secret"
MD = [("application", "thinkroute")]
PLANS = ("drafter", "reasoner")
N = 6


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from router.redis_server import RedisServer

    with RedisServer(port=free_port(), data_dir=tmp_path_factory.mktemp("redis-loop"), maxmemory_bytes=64 << 20) as r:
        yield r


@pytest.fixture(scope="module")
def loop(tmp_path_factory, worker_addresses, redis_server):
    """The embedded config (two candidates, priors, the test's Redis) as a YAML file, served on Ray Serve."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import ROUTER_SERVICER, build_app

    tmp = tmp_path_factory.mktemp("loop")
    raw = yaml.safe_load((REPO / "router/configs/embedded.yaml").read_text())
    pol = raw["policy"]
    pol["candidates"] = {k: v for k, v in pol["candidates"].items() if k in PLANS}
    pol["priors"] = {k: v for k, v in pol["priors"].items() if k in PLANS}
    pol["artifact"] = None
    pol["probe_timeout_ms"] = 120_000  # the drafter's first HiddenState loads its probe layers: wait, no priors fallback
    raw["redis"] = {**raw["redis"], "url": redis_server.url}
    raw["router"]["request_timeout_s"] = 120
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(str(cfg_path))
    grpc_port, http_port = free_port(), free_port()
    os.environ[config.serve.admin_token_env] = ADMIN_TOKEN
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[ROUTER_SERVICER]))
    serve.run(build_app(config, worker_addresses), name="thinkroute", route_prefix="/")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        yield {"stub": rpb_grpc.RouterStub(channel), "grpc": f"127.0.0.1:{grpc_port}", "config": str(cfg_path), "tmp": tmp}
    finally:
        channel.close()
        serve.shutdown()
        ray.shutdown()


def _cli(*argv: str) -> int:
    from router.cli import build_parser

    args = build_parser().parse_args(list(argv))
    return args.func(args)


def _predictions(resp) -> dict:
    return dict(dict(resp.trace.plan.candidates)["predictions"])


def _ask(stub, text: str, rid: str):
    return stub.Generate(rpb.RouteRequest(request_id=rid, query=text, max_tokens=12, temperature=0.0), metadata=MD,
                         timeout=120)


TRAIN = ("--layers", "-1", "--pooling", "last", "--max-tokens", "64", "--pca-dim", "4", "--cv", "3", "--bootstrap", "10",
         "--no-plot", "--no-progress", "--no-cache")


def test_collect_train_serve_reload_feedback_retrain(loop):
    from router.commands.policy import reload_grpc

    stub, tmp, cfg = loop["stub"], loop["tmp"], loop["config"]
    data, outcomes, art, art2 = tmp / "arith.jsonl", tmp / "outcomes.jsonl", tmp / "policy", tmp / "policy2"
    subprocess.run([sys.executable, "ops/data/arith.py", "--n", str(2 * N), "--seed", "0", "--out", str(data)],
                   cwd=REPO, check=True)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    first = tmp / "first.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:N]))

    # serve: priors before any artifact
    r = _ask(stub, rows[N]["question"], "before")
    assert _predictions(r)["kind"] == "priors"

    # collect: every candidate plan of the config on the labelled questions, through the router
    assert _cli("collect", "--config", cfg, "--data", str(first), "--out", str(outcomes), "--router", loop["grpc"],
                "--max-tokens", "12", "--concurrency", "4", "--no-progress") == 0
    got = [json.loads(x) for x in outcomes.read_text().splitlines()]
    assert len(got) == N and all(isinstance(g[p]["is_correct"], bool) and g[p]["tokens"] for g in got for p in PLANS)
    assert {g["task"] for g in got} == {r["task"] for r in rows[:N]}
    # resumable: a second run sends nothing
    assert _cli("collect", "--config", cfg, "--data", str(first), "--out", str(outcomes), "--router", loop["grpc"],
                "--no-progress") == 0
    assert len(outcomes.read_text().splitlines()) == N

    # train: the drafter's hidden states, in-process from the same weights
    assert _cli("train", "--config", cfg, "--outcomes", str(outcomes), "--out", str(art), *TRAIN) == 0
    info = json.loads((art / "train.json").read_text())
    assert info["model_id"] == "smollm2-135m" and info["plans"] == list(PLANS) and info["rows"] == N

    # reload: the running router serves it; unfixed requests are planned by the probe
    got = reload_grpc(loop["grpc"], str(art), ADMIN_TOKEN, timeout=120)
    assert got["source"] == "probe" and got["artifact"] == str(art)
    from router.collect.graders import grade_first_number

    judged = []
    for i, row in enumerate(rows[N:]):
        resp = _ask(stub, row["question"], f"probe-{i}")
        pred = _predictions(resp)
        assert pred["kind"] == "probe" and pred["source"].endswith(str(art)), pred
        judged.append((resp.request_id, grade_first_number(resp.text, row["answer"])[0]))

    # feedback on those answers (graded as an operator's checker would), then train --from-log: the collected
    # file + the deployment's decision log (exported from the test's Redis)
    for rid, ok in judged:
        fb = stub.Feedback(rpb.FeedbackRequest(request_id=rid, correct=ok), metadata=MD, timeout=30)
        assert fb.plan in PLANS and fb.outcomes >= 1
    assert _cli("train", "--config", cfg, "--outcomes", str(outcomes), "--from-log", "--out", str(art2), *TRAIN) == 0
    log_rows = [json.loads(x) for x in (art2 / "from_log.jsonl").read_text().splitlines()]
    assert len(log_rows) == N and all(len(r["plans"]) == 1 for r in log_rows)
    info2 = json.loads((art2 / "train.json").read_text())
    assert info2["rows"] == 2 * N and info2["complete_rows"] == N and "no off-policy correction" in info2["bandit"]
    got = reload_grpc(loop["grpc"], str(art2), ADMIN_TOKEN, timeout=120)
    assert got["source"] == "probe" and got["artifact"] == str(art2)
    assert _predictions(_ask(stub, rows[0]["question"], "after"))["source"].endswith(str(art2))
