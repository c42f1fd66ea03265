"""Reasoning modes (`thinking`) and budget forcing, independent of any backend.

A request's `thinking` field is one of

    off | on | budget=<N> | effort=<low|medium|high>      ("" = the model's own default, untouched)

and a model family's `ThinkingConfig` (registry entry in workers/models.py, or the engine config's
`thinking:`) says which of these it supports and how:

- `start` / `end`: the thinking delimiters (e.g. `<think>` / `</think>`). Tests use stand-in
  delimiters on a model that was never trained with any: the mechanics do not depend on the model.
- `off`: `template` = the chat template's switch (`template_kwarg`, e.g. Qwen3's `enable_thinking`,
  set to false) for chat prompts; `closed_span` = an immediately closed span appended to the prompt
  (`<think>\\n\\n</think>\\n\\n`, what Qwen3's template writes for enable_thinking=false). No `off`
  method = `off` is refused.
- `effort`: low/medium/high -> a thinking budget in tokens, per family.

Budget forcing (`generate_with_thinking`, modes `on` and `budget`): the worker opens the span (the
prompt ends with `start`, appended when it does not), generates at most N tokens with `end` as the
stop string, then closes the span itself (appends `end` and a newline) and lets the answer follow in
a second engine call on prompt + thinking + `end` (a prefix-cache hit for the first call's blocks).
Total generated tokens stay within the request's max_tokens. `on` is the same with N = max_tokens
(natural thinking: the model may close the span itself). The streamed text is
`start + thinking + end + "\\n" + answer`; the final message counts thinking and answer tokens.
Only the answer call sees the caller's stop strings and structured-output constraint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.errors import InvalidRequest
from workers.types import FinishReason, GenerateChunk, GenerateFinal, Sampling

Mode = Literal["off", "on", "budget", "effort"]
Effort = Literal["low", "medium", "high"]

#: Largest thinking budget a request may ask for (tokens).
MAX_BUDGET = 32768
#: The request grammar (also the router knob's pattern): anchored, no free text.
MODE_PATTERN = r"^(off|on|budget=[1-9][0-9]{0,4}|effort=(low|medium|high))$"
_MODE_RE = re.compile(MODE_PATTERN)


class ThinkingConfig(BaseModel):
    """How one model family thinks: delimiters, supported modes, and how `off` and `effort` map."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    start: str = Field(min_length=1, max_length=64)
    """Marker that opens the thinking span, e.g. `<think>`."""
    end: str = Field(min_length=1, max_length=64)
    """Marker that closes it, e.g. `</think>`."""
    modes: list[Mode] = Field(min_length=1, max_length=4)
    """Modes the model serves: off, on, budget (budget=<N>), effort (effort=<low|medium|high>)."""
    off: Literal["template", "closed_span"] | None = None
    """How `off` is done: the chat template's switch, or an immediately closed span; required with `off`."""
    template_kwarg: str = Field("enable_thinking", min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The chat-template variable that switches thinking (off = false), for `off: template`."""
    effort: dict[Effort, int] = Field(default_factory=lambda: {"low": 256, "medium": 1024, "high": 4096})
    """Thinking budget (tokens) per effort level."""

    @field_validator("modes", mode="before")
    @classmethod
    def _yaml_booleans(cls, v):
        """YAML 1.1 reads unquoted `on` / `off` as booleans: take them as the mode names."""
        if isinstance(v, list):
            return [{True: "on", False: "off"}[m] if isinstance(m, bool) else m for m in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> "ThinkingConfig":
        if "off" in self.modes and self.off is None:
            raise ValueError("thinking.modes lists 'off' but thinking.off (template | closed_span) is not set")
        if "effort" in self.modes and set(self.effort) != {"low", "medium", "high"}:
            raise ValueError("thinking.effort needs a budget for each of low, medium, high")
        if any(not 1 <= v <= MAX_BUDGET for v in self.effort.values()):
            raise ValueError(f"thinking.effort budgets must be in [1, {MAX_BUDGET}]")
        return self

    @property
    def closed_span(self) -> str:
        """The immediately closed span that turns thinking off by prompt."""
        return f"{self.start}\n\n{self.end}\n\n"


def supported_modes(cfg: ThinkingConfig | None) -> list[str]:
    """The request values a model accepts, as they are written (for error messages and Info)."""
    if cfg is None:
        return []
    spell = {"off": "off", "on": "on", "budget": "budget=<N>", "effort": "effort=<low|medium|high>"}
    return [spell[m] for m in ("off", "on", "budget", "effort") if m in cfg.modes]


@dataclass(frozen=True)
class ThinkingPlan:
    """What the worker does for one request (from `resolve`)."""

    mode: Literal["off", "on", "budget"]
    #: Thinking-token cap for `budget` (None for on/off).
    budget: int | None = None
    #: Extra chat-template variables (e.g. {"enable_thinking": False}); chat prompts only.
    template_kwargs: dict[str, bool] = dataclasses.field(default_factory=dict)
    #: Text appended to the rendered prompt (the closed span of `off: closed_span`).
    prompt_suffix: str = ""


def parse_mode(value: str) -> tuple[str, str]:
    """("off"|"on"|"budget"|"effort", argument) from a request value; InvalidRequest naming the grammar."""
    if len(value) > 32 or not _MODE_RE.fullmatch(value):
        raise InvalidRequest(
            f"thinking is {value[:32]!r}; use off, on, budget=<N> (1..{MAX_BUDGET}) or effort=<low|medium|high>")
    kind, _, arg = value.partition("=")
    if kind == "budget" and not 1 <= int(arg) <= MAX_BUDGET:
        raise InvalidRequest(f"thinking budget is {arg}; it must be in [1, {MAX_BUDGET}]")
    return kind, arg


def resolve(value: str, cfg: ThinkingConfig | None, model: str, *, chat_prompt: bool) -> ThinkingPlan | None:
    """The plan for a request's `thinking` value on `model` (None for "" = the model's default).

    Raises InvalidRequest naming the model and the modes it supports when it cannot serve the mode.
    """
    if not value:
        return None
    kind, arg = parse_mode(value)
    if cfg is None or kind not in cfg.modes:
        modes = supported_modes(cfg)
        served = f"it supports {', '.join(modes)}" if modes else "it has no thinking modes (no thinking config)"
        raise InvalidRequest(f"model {model!r} cannot serve thinking={value!r}: {served}")
    if kind == "off":
        if cfg.off == "template" and chat_prompt:
            return ThinkingPlan("off", template_kwargs={cfg.template_kwarg: False})
        return ThinkingPlan("off", prompt_suffix=cfg.closed_span)
    kwargs = {cfg.template_kwarg: True} if cfg.off == "template" and chat_prompt else {}
    if kind == "on":
        return ThinkingPlan("on", template_kwargs=kwargs)
    budget = int(arg) if kind == "budget" else cfg.effort[arg]  # type: ignore[index]
    return ThinkingPlan("budget", budget=budget, template_kwargs=kwargs)


GenerateFn = Callable[[str, list[int], Sampling], AsyncIterator[GenerateChunk]]


async def generate_with_thinking(
    plan: ThinkingPlan, cfg: ThinkingConfig, request_id: str, prompt_ids: list[int], sampling: Sampling, *,
    generate: GenerateFn, encode: Callable[[str], list[int]], context_length: int,
) -> AsyncIterator[GenerateChunk]:
    """Stream `start + thinking + end + "\\n" + answer` for modes on/budget (see the module docstring).

    `generate(request_id, ids, sampling)` is the engine's streaming call; `encode(text)` tokenizes without
    special tokens. The last chunk's `final` counts all generated tokens and, of those, `thinking_tokens`
    (at most the budget). An `off` plan is a single pass-through call (its suffix is already in the prompt).
    """
    if plan.mode == "off":
        async with contextlib.aclosing(generate(request_id, prompt_ids, sampling)) as stream:
            async for chunk in stream:
                yield chunk
        return
    t0 = time.perf_counter()
    ids = list(prompt_ids)
    start_ids = encode(cfg.start)
    if ids[-len(start_ids):] != start_ids:
        ids += start_ids
        yield GenerateChunk(text=cfg.start)
    cap = sampling.max_tokens if plan.budget is None else min(plan.budget, sampling.max_tokens)
    think_sampling = dataclasses.replace(sampling, max_tokens=cap, stop=(cfg.end,), constraint=None)
    thought: list[int] = []
    first: GenerateFinal | None = None
    # Closing this generator (client gone) closes the engine stream, which aborts the engine request.
    async with contextlib.aclosing(generate(request_id, ids, think_sampling)) as stream:
        async for chunk in stream:
            thought += chunk.token_ids
            if chunk.final is not None:
                first = chunk.final
            if chunk.text or chunk.token_ids:
                yield GenerateChunk(text=chunk.text, token_ids=chunk.token_ids)
    if first is None:
        return
    n_think = first.generated_tokens
    if first.finish_reason == FinishReason.ABORT:
        yield GenerateChunk(text="", final=dataclasses.replace(first, thinking_tokens=n_think))
        return
    # The engine cut a matched end marker out of the text but kept its tokens; otherwise close the span here.
    closed_by_model = first.stop_string == cfg.end
    if first.finish_reason == FinishReason.STOP and not first.stop_string and thought:
        thought = thought[:-1]  # the model ended inside the span (EOS): continue from before its EOS token
    close_ids = encode("\n") if closed_by_model else encode(cfg.end + "\n")
    yield GenerateChunk(text=cfg.end + "\n")
    answer_ids = ids + thought + close_ids
    remaining = min(sampling.max_tokens - n_think, context_length - len(answer_ids))
    if remaining <= 0:
        yield GenerateChunk(text="", final=dataclasses.replace(
            first, finish_reason=FinishReason.LENGTH, prompt_tokens=len(ids), thinking_tokens=n_think, stop_string="",
            total_time_ms=(time.perf_counter() - t0) * 1e3))
        return
    second: GenerateFinal | None = None
    answer_sampling = dataclasses.replace(sampling, max_tokens=remaining)
    async with contextlib.aclosing(generate(f"{request_id}-answer", answer_ids, answer_sampling)) as stream:
        async for chunk in stream:
            if chunk.final is not None:
                second = chunk.final
            if chunk.text or chunk.token_ids:
                yield GenerateChunk(text=chunk.text, token_ids=chunk.token_ids)
    if second is None:
        return
    yield GenerateChunk(text="", final=GenerateFinal(
        finish_reason=second.finish_reason, prompt_tokens=len(ids),
        generated_tokens=n_think + second.generated_tokens, thinking_tokens=n_think,
        cached_prompt_tokens=first.cached_prompt_tokens, remote_cached_prompt_tokens=first.remote_cached_prompt_tokens,
        stop_string=second.stop_string, time_to_first_token_ms=first.time_to_first_token_ms,
        total_time_ms=(time.perf_counter() - t0) * 1e3))
