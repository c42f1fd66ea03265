"""`thinkroute train --from-log`: the decision log's judged requests (bandit rows: only the plan that answered) as
training rows. The reader accepts rows with a subset of the plans, each plan's heads are fitted on the rows where
it was judged, route-eval's metrics use the complete rows only, and a plan never judged is refused. The log rows
come from the real export (router/feedback.py decision_log_to_outcomes, Outcome.to_json); the outcomes are
synthetic data (tests/unit/test_train.py write_outcomes), the features the prompt-length baseline: no model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from router.config import load_config
from router.decision_log import Decision, Outcome
from router.feedback import decision_log_to_outcomes
from router.learn.outcomes import OutcomeError, load_training_set
from tests.unit.test_train import count, write_outcomes

REPO = Path(__file__).resolve().parents[2]
PLANS = ["drafter", "reasoner", "specreason", "hawkeye"]


def _config():
    return load_config(overrides={"policy.artifact": None})


def log_outcomes(n: int = 40, plans=PLANS, seed: int = 1) -> list[Outcome]:
    """Judged decisions as the router logs them: one plan per request (round robin), short questions right on the
    drafter, the others wrong; cost at the embedded prices for a 20-token prompt and 10 generated tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        plan = plans[i % len(plans)]
        long = bool(rng.random() < 0.5)
        text = f"[log {i}] What is {i} + {i + 1}?" + (" Say why, step by step, at length." * 3 if long else "")
        d = Decision(request_id=f"r{i}", plan=plan, task="add", text=text, cost=(20 + 10) * 0.05e-6,
                     p_correct={plan: 0.5})
        out.append(Outcome(d, 1.0 if (plan == "drafter") != long else 0.0, "add"))
    return out


def write_log(path: Path, outcomes: list[Outcome]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in decision_log_to_outcomes(outcomes)))
    return path


def test_reader_accepts_log_rows_with_a_subset_of_plans(tmp_path):
    full = write_outcomes(tmp_path / "o.jsonl", n=30)
    log = write_log(tmp_path / "log.jsonl", log_outcomes(40))
    ts = load_training_set([str(full)], _config(), count_tokens=count, partial=[str(log)])
    assert ts.data.correct.shape == (70, 4) and ts.plans == PLANS
    assert ts.judged[:30].all() and (ts.judged[30:].sum(1) == 1).all()  # each log row judges the plan that answered
    assert list(ts.complete) == list(range(30))
    assert [f["partial"] for f in ts.files] == [False, True]
    assert np.isnan(ts.data.cost[30:][~ts.judged[30:]]).all()
    # the judged plan's cost is the logged one (its tokens derived from it at the config's prices)
    j = PLANS.index("drafter")
    assert ts.data.cost[30, j] == pytest.approx((20 + 10) * 0.05e-6, rel=1e-9)
    # the same file as --outcomes (not partial) is refused, naming the missing plans
    with pytest.raises(OutcomeError, match=r"no outcome for candidates \['hawkeye', 'reasoner', 'specreason'\]"):
        load_training_set([str(log)], _config(), count_tokens=count)


def test_rows_of_one_text_merge_and_repeats_count_as_duplicates(tmp_path):
    outs = log_outcomes(4)  # one request per plan ...
    for o in outs:
        o.decision.text = "the same question"  # ... all on one text: one row, every plan judged
    rep = Outcome(Decision(request_id="again", plan="drafter", text="the same question", cost=1e-6), 0.0, "add")
    log = write_log(tmp_path / "log.jsonl", outs + [rep])
    ts = load_training_set([], _config(), count_tokens=count, partial=[str(log)])
    assert len(ts.data.texts) == 1 and ts.judged.all() and ts.duplicates == 1
    assert ts.data.correct[0, PLANS.index("drafter")] == 1.0  # the first outcome of a plan wins


def test_a_plan_never_judged_is_refused_naming_it(tmp_path):
    log = write_log(tmp_path / "log.jsonl", log_outcomes(12, plans=["drafter", "reasoner"]))
    with pytest.raises(OutcomeError, match=r"no outcome for plans \['specreason', 'hawkeye'\] in any row"):
        load_training_set([], _config(), count_tokens=count, partial=[str(log)])


def test_each_plans_head_is_fitted_only_where_it_was_judged():
    from probes.probe import Probe, ProbeConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = np.stack([(X[:, 0] > 0), (X[:, 1] > 0)], 1).astype(float)
    tok = np.exp(rng.normal(3, 0.3, size=(120, 2)))
    masked, mtok = y.copy(), tok.copy()
    masked[::2, 1], mtok[::2, 1] = np.nan, np.nan  # plan b judged on the odd rows only
    spec = {"source": "test"}
    p = Probe(["a", "b"], spec, "m", config=ProbeConfig(pca_dim=6)).fit(X, masked, mtok)
    whole = Probe(["a", "b"], spec, "m", config=ProbeConfig(pca_dim=6)).fit(X, y, tok)
    odd = Probe(["a", "b"], spec, "m", config=ProbeConfig(pca_dim=6))
    odd.arrays = dict(p.arrays)  # the same PCA basis (fitted on every row: it needs no labels)
    odd.fit(X[1::2], y[1::2], tok[1::2], keep_basis=True)
    np.testing.assert_allclose(p.arrays["coef"][0], whole.arrays["coef"][0])  # a: all rows, as before
    np.testing.assert_allclose(p.arrays["coef"][1], odd.arrays["coef"][1], rtol=1e-6, atol=1e-9)  # b: judged rows only
    np.testing.assert_allclose(p.arrays["tcoef"][1], odd.arrays["tcoef"][1], rtol=1e-6, atol=1e-9)
    assert np.isfinite(p.predict_proba(X)).all()


def _train(tmp_path: Path, *argv: str) -> int:
    from router.cli import build_parser

    args = build_parser().parse_args(["train", "--features", "length", "--cv", "3", "--bootstrap", "10", "--no-plot",
                                      "--no-progress", *argv])
    return args.func(args)


def test_cli_trains_on_collected_outcomes_plus_the_log(tmp_path, capsys):
    from router.policy.policy import Policy

    full = write_outcomes(tmp_path / "o.jsonl", n=30)
    log = write_log(tmp_path / "log.jsonl", log_outcomes(40))
    out = tmp_path / "art"
    assert _train(tmp_path, "--outcomes", str(full), "--from-log", str(log), "--out", str(out)) == 0
    info = json.loads((out / "train.json").read_text())
    assert info["rows"] == 70 and info["complete_rows"] == 30 and info["judged"] == {p: 30 + 10 for p in PLANS}
    assert "no off-policy correction" in info["bandit"]
    assert info["cv"]["rows"].startswith("the 30 complete rows") and info["cv"]["n"] == 30
    assert info["operating_points"]
    policy = Policy.load(out)
    assert policy.plans == PLANS
    assert "bandit rows" in capsys.readouterr().out


def test_cli_from_log_alone_skips_routing_metrics_and_says_why(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", log_outcomes(40))
    out = tmp_path / "art"
    assert _train(tmp_path, "--from-log", str(log), "--out", str(out)) == 0
    info = json.loads((out / "train.json").read_text())
    assert "skipped" in info["cv"] and info["operating_points"] == []
    assert np.isfinite(info["calibration"]["all plans"]["brier"])
    assert "no cross-validated routing metrics" in capsys.readouterr().out


def test_cli_from_log_without_file_exports_the_deployments_log(tmp_path, capsys):
    """No FILE: the config's deployment log (here `policy.feedback.dir`, store memory) is exported to
    <out>/from_log.jsonl, then trained on."""
    logdir = tmp_path / "fb"
    logdir.mkdir()
    (logdir / "outcomes.jsonl").write_text("".join(o.to_json() + "\n" for o in log_outcomes(40)))
    cfg = yaml.safe_load((REPO / "router/configs/embedded.yaml").read_text())
    cfg["policy"]["artifact"] = None
    cfg["policy"]["feedback"] = {"store": "memory", "dir": str(logdir)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "art"
    assert _train(tmp_path, "--config", str(tmp_path / "c.yaml"), "--from-log", "--out", str(out)) == 0
    assert len((out / "from_log.jsonl").read_text().splitlines()) == 40
    info = json.loads((out / "train.json").read_text())
    assert info["outcomes"][0]["path"] == str(out / "from_log.jsonl") and info["outcomes"][0]["partial"]


def test_cli_needs_outcomes_or_a_log(tmp_path, capsys):
    assert _train(tmp_path, "--out", str(tmp_path / "x")) == 2
    assert "--outcomes" in capsys.readouterr().err
    assert _train(tmp_path, "--from-log", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")) == 2
    assert "not found" in capsys.readouterr().err
