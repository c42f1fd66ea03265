"""Graders: does an answer text match the gold answer? One function per kind, registered in `GRADERS`.

Each grader is `grade(text, gold) -> (is_correct, extracted answer)`:
- `numeric`: the answer's number against the gold number. The answer's number is the one after `####`,
  else after the last `A:` / `answer is` / `Answer:`, else inside the last `\\boxed{}`, else the last number
  in the text; the gold's the same way (GSM8K golds end `#### 18`, the GPT-3 outcome files' `A: 18`).
  Commas, `$` and `%` are dropped; equal within 1e-6 (relative) counts as correct.
- `first_number`: the first number of the text against the gold number (completions such as `12 + 5 =` ...,
  where a small model may carry on with more sums after its answer).
- `choice`: a multiple-choice letter (A-J): `answer is (B)`, `Answer: B`, `(B)`, `B.` or `B)` at the start,
  else the last standalone capital letter A-J in the text; gold is a letter (or starts with one).
- `exact`: normalised exact match (lower case, punctuation and the articles a/an/the dropped, whitespace
  collapsed), as SQuAD's exact-match score.
"""
from __future__ import annotations

import re
import string
from typing import Callable

Grader = Callable[[str, str], "tuple[bool, str]"]

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_MARKERS = [re.compile(r"####\s*(" + _NUM + ")"),
            re.compile(r"(?:^|\n)\s*A:\s*(" + _NUM + ")"),
            re.compile(r"answer is[:\s]*(" + _NUM + ")", re.I),
            re.compile(r"Answer:\s*(" + _NUM + ")"),
            re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}")]


def parse_number(s: str) -> float | None:
    """`-1,234.5`, `$18`, `18.` -> float; None when `s` holds no number."""
    m = _NUM_RE.search(s)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", "").replace("$", "").replace(" ", ""))
    except ValueError:
        return None


def extract_number(text: str) -> str:
    """The answer number of a solution text (see the module docstring), as written; "" when there is none."""
    for marker in _MARKERS:
        found = marker.findall(text)
        if found:
            return found[-1].strip()
    found = _NUM_RE.findall(text)
    return found[-1].strip() if found else ""


def grade_numeric(text: str, gold: str) -> tuple[bool, str]:
    answer = extract_number(text)
    a, g = parse_number(answer), parse_number(extract_number(str(gold)))
    if a is None or g is None:
        return False, answer
    return abs(a - g) <= 1e-6 * max(1.0, abs(g)), answer


def grade_first_number(text: str, gold: str) -> tuple[bool, str]:
    """Completion-style answers (`12 + 5 =` continued by a model that may go on with more sums): the first
    number of the text against the gold number."""
    found = _NUM_RE.findall(text)
    answer = found[0].strip() if found else ""
    a, g = parse_number(answer), parse_number(extract_number(str(gold)))
    if a is None or g is None:
        return False, answer
    return abs(a - g) <= 1e-6 * max(1.0, abs(g)), answer


_LETTER_MARKERS = [re.compile(r"answer is[:\s]*\(?([A-J])\)?\b"), re.compile(r"Answer:\s*\(?([A-J])\)?\b"),
                   re.compile(r"\A\s*\(([A-J])\)"), re.compile(r"\A\s*([A-J])(?:[.):]|\s*\Z)")]
_LETTER = re.compile(r"\b([A-J])\b")


def extract_letter(text: str) -> str:
    for marker in _LETTER_MARKERS:
        found = marker.findall(text)
        if found:
            return found[-1]
    found = _LETTER.findall(text)
    return found[-1] if found else ""


def grade_choice(text: str, gold: str) -> tuple[bool, str]:
    answer = extract_letter(text)
    g = extract_letter(str(gold)) or str(gold).strip()[:1].upper()
    return bool(answer) and answer == g, answer


def normalise(s: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def grade_exact(text: str, gold: str) -> tuple[bool, str]:
    answer = normalise(text)
    return answer == normalise(gold) and bool(answer), text.strip()


#: Grader name (the --grader choices, a data row's `grader` field) -> grader.
GRADERS: dict[str, Grader] = {
    "numeric": grade_numeric,
    "first_number": grade_first_number,
    "choice": grade_choice,
    "exact": grade_exact,
}


def get_grader(name: str) -> Grader:
    """The grader registered under `name`; ValueError naming the choices."""
    try:
        return GRADERS[name]
    except KeyError:
        raise ValueError(f"invalid grader {name!r}: available graders are {sorted(GRADERS)}") from None
