"""`quality >= 0.95` on a held-out split of the shipped six-system GSM8K dev file: the operating point resolved on
the calibration rows (70 %) reaches 95 % of the best plan's held-out accuracy within the 95 % binomial (Wilson)
interval, and its cost share is reported. The probe reads prompt-length features here (fitted in process, no
model needed); docs/routing.md gives the hidden-state run. About 60 s on 2 cores (the tokenizer counts and 5-fold
fits), so it is marked slow."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = REPO / "router" / "configs" / "replay_gsm8k_6sys.yaml"
DATA = REPO.parent / "shared" / "data" / "routing" / "gsm8k_6sys_outcomes.dev.jsonl"


def test_quality_target_holds_on_the_heldout_split(capsys, tmp_path):
    from router.commands.dial_calibrate import run

    args = argparse.Namespace(outcomes=[str(DATA)], config=str(CONFIG), artifact=None, fit="length", out=str(tmp_path),
                              holdout=0.3, check=["quality >= 0.95"], cv=5, seed=0, no_plot=True, json=True)
    assert run(args) == 0
    result = json.loads(capsys.readouterr().out)
    check = result["checks"][0]
    assert check["heldout_rows"] == 240 and check["met"], check
    assert 0 < check["cost_share"] <= 1.5
    assert (tmp_path / "dial_calibration.json").is_file()
