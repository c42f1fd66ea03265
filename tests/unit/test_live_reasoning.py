"""ops/bench/live_reasoning.py's pure parts: the training rows it writes, its scoring and its target reading."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ops" / "bench"))

import live_reasoning as L  # noqa: E402


def test_the_replay_config_has_one_replay_pool_per_plan_priced_in_and_out():
    from router.config import load_config
    from router.policy.costs import in_out

    cfg = load_config(REPO / L.CONFIG)
    for plan, cand in cfg.policy.candidates.items():
        pool = cfg.models[cand.model]
        assert pool.backend == "replay" and pool.model == f"{plan}@replay"
        assert pool.max_model_len >= L.MAX_TOKENS + 256  # recorded token counts are never cut
        pin, pout = in_out(cfg.policy.prices[cand.model])
        assert 0 < pin <= pout  # thinking tokens at the (higher) output price
    assert cfg.models[cfg.router.roles["small"]].backend == "vllm"  # the real drafter for the probe


def test_training_rows_carry_recorded_tokens_per_model(tmp_path):
    from router.config import load_config

    cfg = load_config(REPO / L.CONFIG)
    row = {"id": "x", "dataset": "frames", "question": "Q?", "answer": "A"}
    for plan in cfg.policy.candidates:
        row[plan] = {"is_correct": plan.endswith("budget4096"), "grade": "correct", "output_tokens": 100}
    split = tmp_path / "train.jsonl"
    split.write_text(json.dumps(row) + "\n")
    out = json.loads(L.training_file(cfg, split, tmp_path).read_text())
    assert "answer" not in out and "dataset" not in out  # no gold answer, no task the live request lacks
    cand = cfg.policy.candidates["claude-sonnet-4:budget4096"]
    assert out["claude-sonnet-4:budget4096"] == {"is_correct": True, "tokens": {cand.model: 100.0}}


def test_score_and_reading():
    rows = [{"p:a": {"is_correct": True}, "p:b": {"is_correct": False}}, {"p:a": {"is_correct": False}, "p:b": {"is_correct": True}}]
    results = [{"i": 0, "plan": "pa", "usage": {"pa": (10, 100)}}, {"i": 1, "plan": "pb", "usage": {"pb": (10, 1000)}},
               {"i": 1, "error": "UNAVAILABLE: x"}]
    s = L.score(results, rows, {"pa": "p:a", "pb": "p:b"}, lambda m: (1.0, 10.0))
    assert s["acc"] == 1.0 and s["errors"] == 1 and s["plans"] == {"p:a": 1, "p:b": 1}
    assert s["cost"] == pytest.approx(((10 + 1000) + (10 + 10000)) / 2 / 1e6)
    r = L.reading([(0.5, 0.40), (1.0, 0.45)], (10.0, 0.41))
    assert r["target_10pct_cost"] and r["cost_rel_to_match_best"] == pytest.approx(0.06)
    assert r["gain_at_best_cost"] == pytest.approx(0.04) and r["target_plus3_points"]
