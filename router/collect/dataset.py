"""The labelled data of `thinkroute collect`: one JSON object per line with the query text, its gold answer,
optionally its task and its grader.

Fields are found by name unless given: text `question` | `prompt` | `query`; gold `answer` | `ground_truth` |
`gold` | `label`; task `task` | `subject` | `dataset` (optional); grader: the command's `--grader`, else the
row's `grader` field (numeric | first_number | choice | exact).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from router.collect.graders import GRADERS

TEXT_FIELDS = ("question", "prompt", "query")
GOLD_FIELDS = ("answer", "ground_truth", "gold", "label")
TASK_FIELDS = ("task", "subject", "dataset")
#: Characters of one query text (larger rows are refused, naming the line).
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class LabelledQuery:
    text: str
    gold: str
    task: str | None
    grader: str


@dataclass(frozen=True)
class Fields:
    text: str
    gold: str
    task: str | None


def _pick(row: dict, given: str | None, names: tuple[str, ...], what: str, required: bool) -> str | None:
    if given:
        if given not in row:
            raise ValueError(f"the {what} field {given!r} is not in the data rows (fields: {sorted(row)})")
        return given
    for name in names:
        if name in row:
            return name
    if required:
        raise ValueError(f"no {what} field among {list(names)} in the data rows (fields: {sorted(row)}); name it with --{what}-field")
    return None


def load_queries(path: str | Path, *, grader: str | None = None, text_field: str | None = None,
                 gold_field: str | None = None, task_field: str | None = None,
                 limit: int | None = None) -> tuple[list[LabelledQuery], Fields]:
    """The labelled queries of `path` (first `limit` rows) and the fields used. ValueError names a bad row."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data file {path} not found")
    if grader is not None and grader not in GRADERS:
        raise ValueError(f"invalid grader {grader!r}: available graders are {sorted(GRADERS)}")
    out: list[LabelledQuery] = []
    fields: Fields | None = None
    seen: set[str] = set()
    with p.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(out) >= limit:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not JSON: {e}") from None
            if fields is None:
                fields = Fields(_pick(row, text_field, TEXT_FIELDS, "text", True),  # type: ignore[arg-type]
                                _pick(row, gold_field, GOLD_FIELDS, "gold", True),  # type: ignore[arg-type]
                                _pick(row, task_field, TASK_FIELDS, "task", False))
            text, gold = row.get(fields.text), row.get(fields.gold)
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"{path} line {n}: {fields.text!r} must be a non-empty string of at most {MAX_TEXT_CHARS} characters")
            if gold is None:
                raise ValueError(f"{path} line {n} has no gold answer {fields.gold!r}")
            g = grader or row.get("grader")
            if g not in GRADERS:
                raise ValueError(f"{path} line {n}: no grader: pass --grader {{{','.join(sorted(GRADERS))}}} or give rows a "
                                 f"`grader` field (got {g!r})")
            if text in seen:  # one outcome row per query text: duplicates would collide on resume
                continue
            seen.add(text)
            task = row.get(fields.task) if fields.task else None
            out.append(LabelledQuery(text, str(gold), None if task is None else str(task), g))
    if fields is None:
        raise ValueError(f"data file {path} holds no rows")
    return out, fields
