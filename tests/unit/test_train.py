"""`thinkroute train` on synthetic outcome files (test doubles for data, not for the code under test): the
training set priced by the router config, refusals, the artifact (metrics by route-eval's rule, calibration
plot), serving a text-feature artifact, and `policy reload` (swap, refusal, admin token over HTTP)."""
from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from router.config import load_config
from router.learn.outcomes import OutcomeError, load_training_set

PLANS = ("drafter", "reasoner", "specreason", "hawkeye")


def count(texts):
    return np.array([max(1, len(t) // 4) for t in texts], np.float64)


def write_outcomes(path: Path, n: int = 80, seed: int = 0, extra_plan: str | None = None, drop: str | None = None) -> Path:
    """Short questions: the drafter is right; long ones: only the reasoner (so prompt length predicts it)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        long = i % 2 == 1
        q = f"({i}) What is {rng.randint(1, 9)} + {rng.randint(1, 9)}?" + (" Explain every step of the sum carefully." * 3 if long else "")
        row = {"question": q, "task": "add",
               "drafter": {"is_correct": not long, "tokens": {"smollm2-135m": 8}},
               "reasoner": {"is_correct": long or rng.random() < 0.5, "tokens": {"gemma3-270m": 10}},
               "specreason": {"is_correct": rng.random() < 0.5, "tokens": {"smollm2-135m": 20, "gemma3-270m": 5}},
               "hawkeye": {"is_correct": rng.random() < 0.5, "tokens": {"smollm2-135m": 10, "gemma3-270m": 10}}}
        if extra_plan:
            row[extra_plan] = {"is_correct": True}
        if drop:
            row.pop(drop)
        rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_training_set_prices_plans_from_the_config(tmp_path):
    cfg = load_config()
    ts = load_training_set([str(write_outcomes(tmp_path / "o.jsonl"))], cfg, count_tokens=count)
    assert ts.plans == list(cfg.policy.candidates) and ts.data.correct.shape == (80, 4)
    q = ts.data.texts[0]
    prompt = max(1, len(q) // 4)
    j = ts.plans.index("specreason")  # both models read the prompt; each model's tokens at its price
    expect = (prompt * (0.05 + 0.10) + 20 * 0.05 + 5 * 0.10) / 1e6
    assert ts.data.cost[0, j] == pytest.approx(expect)
    assert ts.prices["specreason"].cost(prompt, ts.data.out_tokens[0, j]) == pytest.approx(expect)


def test_refuses_plans_not_in_the_config_and_missing_candidates(tmp_path):
    cfg = load_config()
    with pytest.raises(OutcomeError, match=r"plans \['gpt4'\] are not in the config"):
        load_training_set([str(write_outcomes(tmp_path / "a.jsonl", extra_plan="gpt4"))], cfg, count_tokens=count)
    with pytest.raises(OutcomeError, match=r"no outcome for candidates \['hawkeye'\]"):
        load_training_set([str(write_outcomes(tmp_path / "b.jsonl", drop="hawkeye"))], cfg, count_tokens=count)


@pytest.fixture(scope="module")
def length_artifact(tmp_path_factory):
    from router.learn.fit import train_artifact
    from router.learn.textfeat import LengthFeatures

    tmp = tmp_path_factory.mktemp("train")
    ts = load_training_set([str(write_outcomes(tmp / "o.jsonl", n=100))], load_config(), count_tokens=count)
    src = LengthFeatures()
    info = train_artifact(ts, src.features(ts.data.texts), src.spec, src.model_id, tmp / "art", cv=4, progress=False, bootstrap=20)
    return tmp / "art", info, ts


def test_artifact_has_cv_metrics_by_route_evals_rule_and_a_calibration_plot(length_artifact):
    path, info, _ = length_artifact
    saved = json.loads((path / "train.json").read_text())
    assert saved["plans"] == list(PLANS) and saved["model_id"] == "none"
    assert saved["feature_spec"] == {"source": "log_prompt_tokens", "estimate": "chars/4"}
    methods = saved["cv"]["methods"]
    for m in ("probe", "noise", "length", "base-rate", "always-cheapest", "always-best", "single-envelope", "oracle"):
        assert {"area", "apgr", "cost_rel_to_match_best"} <= set(methods[m])
    # length determines who is right here: the probe recovers most of the cheapest -> best gap
    assert methods["probe"]["area"] > methods["base-rate"]["area"]
    assert (path / "calibration.png").stat().st_size > 1000 and (path / "probe" / "probe.npz").exists()
    assert saved["outcomes"][0]["rows"] == 100 and len(saved["outcomes"][0]["sha256"]) == 64


async def test_text_feature_artifact_is_served_without_a_worker(length_artifact):
    from router.planner import DialStore, Planner
    from router.policy.planning import PlanningPolicy
    from router.types import RouteQuery

    path, _, ts = length_artifact
    cfg = load_config(overrides={"policy.artifact": str(path)})
    live = PlanningPolicy(cfg)
    planner = Planner(cfg, DialStore(0.5), live)
    short = await planner.plan(RouteQuery(query="What is 2 + 3?", dial=1.0), pool=object())
    long = await planner.plan(RouteQuery(query="What is 2 + 3?" + " Explain every step of the sum carefully." * 3, dial=1.0),
                              pool=object())
    info = short.candidates["predictions"]
    assert info["kind"] == "probe" and info["features"] == "log_prompt_tokens"
    p_short = {c["plan"]: c["p_correct"] for c in short.candidates["ranked"]}
    p_long = {c["plan"]: c["p_correct"] for c in long.candidates["ranked"]}
    assert p_short["drafter"] > 0.8 > 0.2 > p_long["drafter"]


def test_priors_trace_says_priors():
    from router.planner import DialStore, Planner
    from router.policy.planning import PlanningPolicy
    from router.types import RouteQuery

    cfg = load_config(overrides={"policy.artifact": None})
    plan = asyncio.run(Planner(cfg, DialStore(0.5), PlanningPolicy(cfg)).plan(RouteQuery(query="hi")))
    assert plan.candidates["predictions"]["kind"] == "priors"


class _Core:
    def __init__(self, config, admin_token="tok"):
        from router.admission import Admission
        from router.planner import DialStore, Planner
        from router.policy.planning import build_planning_policy

        self.config = config
        self.admission = Admission(config, {}, admin_token)
        self.pool = object()
        self.planner = Planner(config, DialStore(0.5), build_planning_policy(config))


async def test_reload_swaps_and_a_bad_artifact_leaves_the_old_policy(length_artifact, tmp_path):
    from router.errors import InvalidRoute
    from router.learn.serving import PolicyReloader

    path, _, _ = length_artifact
    core = _Core(load_config(overrides={"policy.artifact": None}))
    rl = PolicyReloader(core)
    before = core.planner.policy
    got = await rl.reload(str(path))
    assert got["source"] == "probe" and got["feature_source"] == "log_prompt_tokens" and got["version"] == 1
    assert core.planner.policy is not before and before.policy is None  # the old object is untouched
    swapped = core.planner.policy
    (tmp_path / "bad").mkdir()
    with pytest.raises(InvalidRoute, match="no probe"):
        await rl.reload(str(tmp_path / "bad"))
    assert core.planner.policy is swapped
    back = await rl.reload("")  # the configured policy: priors here
    assert back["source"] == "priors"


def test_reload_over_http_needs_the_admin_token(length_artifact):
    from router.http_api import OpenAIFrontend, build_http_app
    from router.learn.serving import PolicyReloader

    path, _, _ = length_artifact
    config = load_config(overrides={"policy.artifact": None})
    core = _Core(config)
    core.policy_reloader = PolicyReloader(core)
    client = TestClient(build_http_app(OpenAIFrontend(core, config, {})), client=("127.0.0.1", 5000))
    r = client.post("/admin/policy/reload", json={"artifact": str(path)})
    assert r.status_code == 403 and "x-thinkroute-admin-token" in r.json()["error"]["message"]
    r = client.post("/admin/policy/reload", json={"artifact": str(path)}, headers={"x-thinkroute-admin-token": "tok"})
    assert r.status_code == 200 and r.json()["source"] == "probe"
    r = client.post("/admin/policy/reload", json={"artifact": 3}, headers={"x-thinkroute-admin-token": "tok"})
    assert r.status_code == 400
    r = client.post("/admin/policy/reload", json={"artifact": "/nonexistent/x"}, headers={"x-thinkroute-admin-token": "tok"})
    assert r.status_code == 400 and "no probe" in r.json()["error"]["message"]


def test_embedded_arith_set_is_seeded_and_graded():
    from router.learn.embedded import arith_set, grade

    a, b = arith_set(18, seed=0), arith_set(18, seed=0)
    assert a == b and len({r["task"] for r in a}) == 9
    last = a[8]["question"].splitlines()[-1]  # "873 x 197 =": the gold answer is the product
    x, _, y, _ = last.split()
    assert a[8]["answer"] == str(int(x) * int(y))
    assert grade(" 42\n3 + 4 = 7", "42") and not grade("41", "42") and not grade("no number", "42")


def test_train_json_lists_operating_points(length_artifact):
    _, info, _ = length_artifact
    pts = info["operating_points"]
    assert [p["quantile"] for p in pts][:2] == [0.0, 0.1] and pts[0]["dial"] == 0.0
    assert all(b["dial"] >= a["dial"] for a, b in zip(pts, pts[1:]))
