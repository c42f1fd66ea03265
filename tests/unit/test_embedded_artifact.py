"""The embedded default ships a trained policy artifact (router/artifacts/embedded, written by
`python -m router.learn.embedded --out router/artifacts/embedded`) instead of priors: it loads, it is servable by
the drafter's HiddenState RPC, its plans are the config's candidates, it was trained on the outcome file shipped
beside it, and a request planned with it says `probe` (features from a pool double here: the real path is covered
by tests/integration/test_router.py). Priors stay the fallback when no artifact is configured."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from router.config import load_config
from router.planner import DialStore, Planner
from router.policy.planning import PlanningPolicy
from router.types import RouteQuery

REPO = Path(__file__).resolve().parents[2]
ART = REPO / "router/artifacts/embedded"


class Pool:
    """The two pool methods planning calls, answering as the embedded drafter would (579 columns: SmolLM2's last
    layer, 576, and the three uncertainty columns)."""

    def __init__(self) -> None:
        self.calls = 0

    async def served_model_id(self, model: str, deadline: float | None = None) -> str:
        return "smollm2-135m"

    async def hidden_features(self, model, prompts, request, *, deadline):
        self.calls += 1
        return [np.random.default_rng(0).normal(size=579).astype(np.float32)], "smollm2-135m", \
            SimpleNamespace(latency_ms=1.0, replica="fake:1")


def test_the_embedded_config_serves_the_shipped_artifact():
    cfg = load_config()
    assert cfg.policy.artifact == "router/artifacts/embedded"
    live = PlanningPolicy(cfg)
    assert live.policy is not None and live.policy.probe.model_id == "smollm2-135m"
    assert live.request == {"layers": [-1], "pooling": ["last"], "uncertainty": True, "max_tokens": 64}
    assert sorted(live.policy.plans) == sorted(cfg.policy.candidates)


def test_the_artifact_was_trained_on_the_outcomes_shipped_beside_it():
    info = json.loads((ART / "train.json").read_text())
    (src,) = info["outcomes"]
    shipped = ART / "outcomes.jsonl"
    assert Path(src["path"]).name == "outcomes.jsonl" and src["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    rows = [json.loads(x) for x in shipped.read_text().splitlines()]
    assert info["rows"] == len(rows) == src["rows"] and info["model_id"] == "smollm2-135m"
    from router.learn.embedded import arith_set

    assert [r["question"] for r in rows] == [r["question"] for r in arith_set(len(rows))]  # the seeded set, in order
    assert "probe" in info["cv"]["methods"] and (ART / "calibration.png").is_file()


async def test_a_request_planned_with_it_says_probe_and_without_it_priors():
    cfg = load_config()
    pool = Pool()
    plan = await Planner(cfg, DialStore(0.5), PlanningPolicy(cfg)).plan(RouteQuery(query="Answer with the number only.\n"
                                                                                    "3 + 4 = 7\n12 + 5 ="), pool=pool)
    assert plan.candidates["predictions"]["kind"] == "probe" and pool.calls == 1
    assert plan.candidates["predictions"]["source"] == "probe artifact router/artifacts/embedded"
    prior = load_config(overrides={"policy.artifact": None})
    plan = await Planner(prior, DialStore(0.5), PlanningPolicy(prior)).plan(RouteQuery(query="q?"))
    assert plan.candidates["predictions"]["kind"] == "priors"
