"""route-eval: metric functions on hand-computed cases, group folds, and a small end-to-end run."""
import argparse
import json

import numpy as np
import pytest

from router.policy import metrics as M
from router.policy.evaluate import RoutingEvalConfig, load_config, make_folds
from router.policy.costs import SystemPrice


def test_hull_drops_dominated_and_concave_points():
    h = M.hull([(1, 0.5), (2, 0.4), (3, 0.55), (4, 0.9), (5, 0.8)])
    assert h.tolist() == [[1, 0.5], [4, 0.9]]  # (3, .55) lies under the chord, (2, .4)/(5, .8) dominated


def test_area_of_flat_and_linear_curves():
    assert M.area([(1, 0.6)], 1, 100) == pytest.approx(0.6)
    # chord from (1, 0) to (100, 1): mean over log-uniform c of (c-1)/99
    xs = np.exp(np.linspace(0, np.log(100), 100001))
    expect = np.trapezoid((xs - 1) / 99, np.log(xs)) / np.log(100)
    assert M.area([(1, 0.0), (100, 1.0)], 1, 100) == pytest.approx(expect, rel=1e-4)
    assert M.area([(10, 1.0)], 1, 100) == pytest.approx(0.5, abs=1e-2)  # nothing below cost 10


def test_apgr_hand_cases():
    lo, hi = (1.0, 0.5), (3.0, 0.9)
    assert M.apgr([lo, hi], 1, 0.5, 3, 0.9) == pytest.approx(0.5)  # random mixing
    assert M.apgr([lo, (1.0, 0.9)], 1, 0.5, 3, 0.9) == pytest.approx(1.0)  # best accuracy at cheapest cost
    # reach 0.9 at cost 2: PGR rises linearly 0->1 on [1,2] then stays 1 -> mean 0.75
    assert M.apgr([lo, (2.0, 0.9)], 1, 0.5, 3, 0.9) == pytest.approx(0.75, abs=2e-3)


def test_cost_to_reach_and_cpt():
    pts = [(1.0, 0.5), (2.0, 0.9)]
    assert M.cost_to_reach(pts, 0.7) == pytest.approx(1.5)
    assert M.cost_to_reach(pts, 0.95) == float("inf")
    assert M.cost_to_reach(pts, 0.4) == 1.0
    # two systems: weak 0.6, strong 0.8; a router reaching 0.8 with 40 % strong calls
    share = [(0.4, 0.8), (1.0, 0.8)]
    assert M.cpt(share, 0.6, 0.8, 0.5) == pytest.approx(0.2)
    assert M.cpt(share, 0.6, 0.8, 0.8) == pytest.approx(0.32)
    assert M.routellm_apgr(share, 0.6, 0.8) == pytest.approx((0.2 * 1 + 0.6 * 1.0) / 1.0, abs=3e-3)


def test_group_folds_never_share_a_group():
    rng = np.random.default_rng(0)
    groups = np.array([f"g{i}" for i in rng.integers(0, 12, 500)], dtype=object)
    folds = make_folds(len(groups), 5, groups, seed=1)
    seen = set()
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert not set(groups[test]) & seen
        seen |= set(groups[test])
        assert len(train) + len(test) == len(groups)
    assert seen == set(groups)
    with pytest.raises(ValueError):
        make_folds(10, 5, np.array(["a", "b"] * 5))


def test_row_folds_partition():
    folds = make_folds(103, 5)
    allt = np.concatenate([t for _, t in folds])
    assert sorted(allt.tolist()) == list(range(103))


def test_shipped_configs_load():
    from router.policy.evaluate import CONFIG_DIR

    names = {load_config(p).name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"gsm8k_gpt3", "gsm8k_6sys", "mmlu"} <= names


class FakeSource:
    """Deterministic pseudo-features with a planted signal (difficulty word in the text)."""

    def __init__(self, model_id, dim=12):
        self.model_id = model_id
        self.dim = dim

    @property
    def spec(self):
        return {"source": "fake", "model_id": self.model_id}

    def features(self, texts):
        out = []
        for t in texts:
            rng = np.random.default_rng(abs(hash(t)) % 2**32)
            v = rng.normal(size=self.dim)
            v[0] = 2.0 if "hard" in t else -2.0
            out.append(v)
        return np.array(out)


def test_area_batch_matches_area():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 9))
        xs, ys = np.exp(rng.normal(size=(1, n))), rng.random((1, n))
        lo = float(np.exp(rng.normal() - 1))
        hi = lo * float(np.exp(rng.random() * 3))
        assert M.area_batch(xs, ys, [lo], [hi])[0] == pytest.approx(M.area(list(zip(xs[0], ys[0])), lo, hi), abs=2e-3)


def test_end_to_end_route_eval_small(tmp_path, capsys):
    from router.commands.route_eval import make_split, plot, print_table, run_config

    rng = np.random.default_rng(0)
    rows = []
    for i in range(90):
        hard = i % 2 == 0
        rows.append({"question": f"q{i} {'hard' if hard else 'easy'} " + "w " * int(rng.integers(5, 30)), "subject": f"s{i % 6}",
                     "small": {"is_correct": (not hard) and rng.random() < 0.9, "solution": "a " * 10},
                     "large": {"is_correct": rng.random() < 0.9, "solution": "a " * 20}})
    data = tmp_path / "out.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = RoutingEvalConfig(name="tiny", data=str(data), systems={"small": SystemPrice(1, 1), "large": SystemPrice(20, 20)},
                            group_field="subject", probe={"Cs": [0.3], "pca_dim": 8}, policy={"task_context_dim": 2},
                            baseline_features={"minilm": {}}, knn={"features": "minilm", "k": 5},
                            meta={"ks": [4], "repeats": 1, "min_rows": 8}, cv=3)
    decisions = tmp_path / "d.jsonl"
    args = argparse.Namespace(group_by=None, train=None, eval=None, data=None, limit=None, cv=3, meta=True, no_progress=True,
                              decisions=str(decisions), bootstrap=100, methods=None)
    count = lambda texts: np.array([len(t.split()) for t in texts], float)
    srcs = {"probe": FakeSource("fake-drafter"), "minilm": FakeSource("fake-minilm")}
    res = run_config(cfg, args, sources=srcs, count_tokens=count)
    m = res["methods"]
    assert {"probe", "noise", "length", "base-rate", "minilm", "knn[minilm]", "always-cheapest", "always-best", "single-envelope", "oracle"} <= set(m)
    assert len(m["probe"]["folds"]) == 3 and m["probe"]["servable"] and m["probe"]["role"] == "probe"
    assert res["strongest_baseline"] in m and "probe" in res["comparisons"]
    assert "a_k0.area" in res["meta"]["summary"] and "c_k4.area" in res["meta"]["summary"]
    lines = decisions.read_text().splitlines()
    assert len(lines) == sum(len(v["points"]) for v in m.values()) * 90
    print_table(res)
    assert "probe" in capsys.readouterr().out
    plot([res, res], str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    # the documented dev/other split: whole groups, deterministic, a partition
    dev, other = make_split(str(data), str(tmp_path / "split"), "subject", 0.3, "question")
    dv = [json.loads(x)["subject"] for x in dev.read_text().splitlines()]
    ot = [json.loads(x)["subject"] for x in other.read_text().splitlines()]
    assert len(dv) + len(ot) == 90 and not set(dv) & set(ot) and ot
    args2 = argparse.Namespace(**{**vars(args), "train": str(dev), "eval": str(other), "meta": False, "decisions": str(tmp_path / "d2.jsonl")})
    res2 = run_config(cfg, args2, sources=srcs, count_tokens=count)
    assert res2["folds"] == 1
    assert len((tmp_path / "d2.jsonl").read_text().splitlines()) == sum(len(v["points"]) for v in res2["methods"].values()) * len(ot)
