"""The trace every answer carries: the plan and why, each model call, tokens per model, stage times."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ModelCallRecord:
    model: str
    role: str
    kind: str                      # "generate" | "score" | "tokenize" | "hidden_state"
    replica: str = ""
    step: int = -1                 # strategy step, -1 = not step-based
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    remote_cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    #: Of generated_tokens, those inside the thinking span (the answer is the rest).
    thinking_tokens: int = 0
    latency_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    finish_reason: str = ""
    attempts: int = 1


#: ModelCallRecord's field names, in order: `call_dict` copies them (every value is a str, int or float).
_CALL_FIELDS = tuple(f.name for f in fields(ModelCallRecord))


def call_dict(c: ModelCallRecord) -> dict[str, Any]:
    """`dataclasses.asdict(c)` without its recursive deep copy (the fields are scalars, so the result is equal)."""
    return {name: getattr(c, name) for name in _CALL_FIELDS}


@dataclass
class Trace:
    plan: dict[str, Any] = field(default_factory=dict)
    calls: list[ModelCallRecord] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add_call(self, record: ModelCallRecord) -> None:
        self.calls.append(record)

    def usage(self) -> list[dict[str, Any]]:
        """Tokens per model, summed over every call (tokenize calls excluded); thinking_tokens is the part
        of generated_tokens inside thinking spans (answer tokens = generated_tokens - thinking_tokens)."""
        per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for c in self.calls:
            if c.kind == "tokenize":
                continue
            u = per[c.model]
            u["prompt_tokens"] += c.prompt_tokens
            u["cached_prompt_tokens"] += c.cached_prompt_tokens
            u["generated_tokens"] += c.generated_tokens
            u["thinking_tokens"] += c.thinking_tokens
            u["calls"] += 1
        return [{"model": m, **dict(u)} for m, u in per.items()]

    def stage(self, name: str) -> "_Stage":
        """`with trace.stage("plan"): ...` records the block's wall time in stage_ms[name]."""
        return _Stage(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "calls": [call_dict(c) for c in self.calls],
            "usage": self.usage(),
            "stage_ms": dict(self.stage_ms),
            "details": self.details,
        }


class _Stage:
    def __init__(self, trace: Trace, name: str) -> None:
        self.trace, self.name = trace, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.trace.stage_ms[self.name] = self.trace.stage_ms.get(self.name, 0.0) + (time.perf_counter() - self.start) * 1e3
