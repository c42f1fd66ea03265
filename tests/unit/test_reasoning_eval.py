"""route-eval's reasoning-mode anchors (router/policy/reasoning_eval.py) on a small planted data set, and
the shipped reasoning config against the outcome file's plans."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from router.policy.costs import SystemPrice
from router.policy.evaluate import RoutingEvalConfig, load_config
from router.policy.reasoning_eval import split_plan, targets, tier_labels

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "routing" / "reasoning_outcomes.dev.jsonl"


class PlantedSource:
    """Features that say which tier a question needs (its `tierN` word) plus noise."""

    model_id = "planted"
    spec = {"source": "planted"}

    def features(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=6) * 0.1
            v[int(t.split("tier")[1][0])] = 3.0
            out.append(v)
        return np.array(out)


def test_split_plan_and_tier_labels():
    assert split_plan("claude-sonnet-4:budget4096") == ("claude-sonnet-4", "budget4096")
    assert split_plan("plain") == ("plain", "")
    c = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert tier_labels(c).tolist() == [0, 1, 2, 0]  # nothing correct: thinking buys nothing -> no think


def _rows(n=150, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tier = i % 3
        row = {"id": str(i), "dataset": "a" if i % 2 else "b", "question": f"q{i} tier{tier} " + "w " * int(rng.integers(3, 9))}
        for k, lv in enumerate(("no_think", "budget256", "budget1024")):
            row[f"m:{lv}"] = {"is_correct": bool(k >= tier and rng.random() < 0.95), "output_tokens": [20, 300, 1100][k]}
        row["cheap:no_think"] = {"is_correct": bool(tier == 0 and rng.random() < 0.5), "output_tokens": 5}
        rows.append(row)
    return rows


def test_anchors_and_three_tier_end_to_end(tmp_path, capsys):
    from router.commands.route_eval import print_table, run_config

    data = tmp_path / "r.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows()))
    systems = {f"m:{lv}": SystemPrice(1, 10) for lv in ("no_think", "budget256", "budget1024")}
    systems["cheap:no_think"] = SystemPrice(0.1, 0.1)
    cfg = RoutingEvalConfig(name="tiny-reasoning", data=str(data), systems=systems, probe={"Cs": [0.3], "pca_dim": 4},
                            baseline_features={"minilm": {}}, knn={"features": "minilm", "k": 5}, cv=3,
                            reasoning={"tier_features": "minilm", "three_tier": {"m": ["no_think", "budget256", "budget1024"]}})
    args = argparse.Namespace(group_by=None, train=None, eval=None, data=None, limit=None, cv=3, meta=False, no_progress=True,
                              decisions=None, bootstrap=50,
                              methods=["base-rate", "always-no-think", "always-largest-level", "best-fixed-level", "three-tier[m]"])
    count = lambda texts: np.array([len(t.split()) for t in texts], float)
    res = run_config(cfg, args, sources={"probe": PlantedSource(), "minilm": PlantedSource()}, count_tokens=count)
    m = res["methods"]
    assert {"always-no-think", "always-largest-level", "best-fixed-level", "three-tier[m]"} <= set(m)
    # recorded output tokens are the cost: m:budget1024 costs 1100 x $10/M + prompt x $1/M
    j = res["systems"].index("m:budget1024")
    assert res["singles"]["m:budget1024"]["cost_per_query"] == pytest.approx(1100 * 10 / 1e6, rel=0.01)
    assert j >= 0
    # the anchors' points are the plans of their rule
    assert {p["point"] for p in m["always-no-think"]["points"]} == {"m:no_think", "cheap:no_think"}
    assert {p["point"] for p in m["always-largest-level"]["points"]} == {"m:budget1024", "cheap:no_think"}
    assert {p["point"] for p in m["best-fixed-level"]["points"]} == {"m:budget1024", "cheap:no_think"}
    # the planted tier is learnable: the classifier's argmax point is about as accurate as the full tier, cheaper
    tt = {p["point"]: p for p in m["three-tier[m]"]["points"]}
    full = res["singles"]["m:budget1024"]
    assert tt["argmax"]["acc"] >= full["acc"] - 0.05 and tt["argmax"]["cost"] < 0.7 * full["cost_per_query"]
    t = res["targets"]["methods"]["three-tier[m]"]
    assert len(t["cost_rel_to_match_best"]) == 3 and isinstance(t["margin_met"], bool)
    print_table(res)
    out = capsys.readouterr().out
    assert "three-tier[m]" in out and "cost to match" in out


def test_targets_reading():
    res = {"references": {"c_hi": [1.0, 2.0], "a_hi": [0.4, 0.5]},
           "methods": {"x": {"folds": [{"cost_rel_to_match_best": 0.05, "acc_at_best_cost": 0.45},
                                       {"cost_rel_to_match_best": float("inf"), "acc_at_best_cost": 0.49}]}}}
    t = targets(res)["methods"]["x"]
    assert t["match_at_share_folds"] == "1/2" and not t["match_at_share_met"]
    assert t["gain_at_best_cost"] == pytest.approx([0.05, -0.01]) and t["margin_folds"] == "1/2"
    assert t["cost_usd_to_match_best"][0] == pytest.approx(0.05)


@pytest.mark.skipif(not DATA.exists(), reason="shared data not present")
def test_shipped_reasoning_config_prices_every_plan_of_the_file():
    cfg = load_config(REPO / "router" / "configs" / "routing" / "reasoning.yaml")
    row = json.loads(DATA.open().readline())
    plans = {k for k, v in row.items() if isinstance(v, dict) and "is_correct" in v}
    assert set(cfg.systems) == plans
    for p, price in cfg.systems.items():  # one price per model, whatever the level
        same = [q for q in cfg.systems if split_plan(q)[0] == split_plan(p)[0]]
        assert all(cfg.systems[q] == price for q in same)
    for model, levels in cfg.reasoning["three_tier"].items():
        assert all(f"{model}:{lv}" in plans for lv in levels)


def test_bootstrap_of_a_fold_holding_one_whole_group_resamples_rows():
    """Transfer folds (train on one data set, evaluate on the other) hold one group: resampling groups would
    draw the same rows every time (a zero-width interval), so rows are resampled."""
    from router.policy.evaluate import bootstrap_weights

    one = bootstrap_weights(50, np.array(["frames"] * 50, dtype=object), 20, 0)
    assert one.std(0).mean() > 0 and (one.sum(1) == 50).all()
    two = bootstrap_weights(10, np.array(["a"] * 5 + ["b"] * 5, dtype=object), 20, 0)
    assert (two[:, :5].std(1) == 0).all()  # several groups: whole groups as before
