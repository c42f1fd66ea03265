"""Final-answer extraction: `\\boxed{...}` (balanced braces) if present, else the last number."""
from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        c = text[i]
        depth += c == "{"
        depth -= c == "}"
        if depth == 0:
            return "".join(out).strip()
        out.append(c)
        i += 1
    return None


def extract_final_answer(text: str) -> str:
    """`\\boxed{}` content, else the number after '####' or 'answer is', else the last number; '' if none.
    Total: any text gives a string, nothing raises (a finished answer never becomes an error)."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return normalize_number(boxed)
    for marker in ("####", "answer is", "Answer:"):
        pos = text.rfind(marker)
        if pos >= 0:
            m = _NUMBER.search(text, pos)
            if m:
                return normalize_number(m.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else ""


def normalize_number(s: str) -> str:
    """'1,000.50' -> '1000.5'; '$18' -> '18'; anything else (words, 'inf', 'nan', '1e400', which is
    not a finite float) is returned stripped; huge integers keep float notation ('1e+20'). Never raises."""
    t = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        v = float(t)
    except (ValueError, OverflowError):
        return s.strip()
    if not math.isfinite(v):
        return s.strip()
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K `answer` field (after '#### ')."""
    return normalize_number(answer.rsplit("####", 1)[-1])
