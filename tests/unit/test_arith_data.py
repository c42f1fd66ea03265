"""ops/data/arith.py: the seeded graded arithmetic set (same rows for the same seed, gold answers right)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from router.collect.graders import GRADERS, grade_first_number

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("arith", REPO / "ops" / "data" / "arith.py")
arith = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arith)


def test_seeded_and_graded(tmp_path):
    a, b = arith.rows(30, 0), arith.rows(30, 0)
    assert a == b and a != arith.rows(30, 1) and len(a) == 30
    for r in a:
        expr = r["question"].splitlines()[-1].rstrip("=").replace("x", "*")
        assert int(r["answer"]) == eval(expr)  # noqa: S307 - digits and one operator, written by the generator
        assert r["grader"] in GRADERS and grade_first_number(f" {r['answer']}\n1 + 1 = 2", r["answer"])[0]
    out = tmp_path / "add.jsonl"
    assert arith.main(["--n", "12", "--ops", "+", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {r["task"] for r in rows} == {"+1", "+2", "+3"}


def test_bad_ops():
    with pytest.raises(ValueError, match="ops"):
        arith.rows(3, 0, "/")
