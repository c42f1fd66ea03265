"""The `Strategy` ABC and the `Context` through which a strategy reaches models.

A strategy is one way of answering: a small class with knobs (`Options`, a pydantic model
parsed once at the boundary) and one coroutine `run(query, ctx) -> StrategyResult`.
It never talks to workers itself: `ctx.generate` / `ctx.score` / `ctx.tokenize` go
through the worker pool (gRPC), respect the request deadline, and record every call in
the trace (role, step, tokens, latency). Per-step decisions go in `ctx.trace.details`.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from router.errors import InvalidRoute, ModelCallError
from router.trace import ModelCallRecord, Trace
from router.types import Completion, ModelInfo, RouteQuery, Scored
from workers.types import PromptInput, Sampling


class StrategyOptions(BaseModel):
    """Base for per-strategy knobs. Unknown knobs are rejected with the valid names."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StrategyResult:
    text: str
    finish_reason: str = "stop"
    details: dict[str, Any] = field(default_factory=dict)


class ModelAccess(Protocol):
    """What the worker pool offers strategies (see router/pool.py)."""

    async def generate(self, model: str, prompt: PromptInput, sampling: Sampling, *, deadline: float,
                       on_delta: Callable[[str], Awaitable[None]] | None = None) -> tuple[Completion, ModelCallRecord]: ...

    async def score(self, model: str, prompt: PromptInput, *, continuation_ids: list[int] | None,
                    continuation_text: str | None, top_k: int, candidate_ids: list[int],
                    deadline: float) -> tuple[Scored, ModelCallRecord]: ...

    async def tokenize(self, model: str, prompt: PromptInput, *, deadline: float) -> list[int]: ...

    async def info(self, model: str) -> ModelInfo: ...


class Context:
    """Per-request handle given to `Strategy.run`.

    `models` maps the strategy's roles to model names (e.g. {"small": ..., "large": ...}).
    `emit` (optional) receives the answer's text deltas for streaming ingresses: a strategy
    passes `stream=True` to the generate call(s) whose text is the answer.
    """

    def __init__(self, pool: ModelAccess, models: dict[str, str], trace: Trace, deadline: float,
                 emit: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.pool, self.models, self.trace, self.deadline, self.emit = pool, models, trace, deadline, emit

    def model(self, role: str) -> str:
        try:
            return self.models[role]
        except KeyError:
            raise InvalidRoute(f"the plan names no model for role {role!r}; it has {sorted(self.models)}") from None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    async def generate(self, role: str, prompt: PromptInput, sampling: Sampling, *, step: int = -1,
                       stream: bool = False) -> Completion:
        try:
            completion, record = await self.pool.generate(
                self.model(role), prompt, sampling, deadline=self.deadline,
                on_delta=self.emit if (stream and self.emit) else None,
            )
        except ModelCallError as e:
            raise e.at(role, step) from e
        record.role, record.step = role, step
        self.trace.add_call(record)
        return completion

    async def score(self, role: str, prompt: PromptInput, *, continuation_ids: list[int] | None = None,
                    continuation_text: str | None = None, top_k: int = 0, candidate_ids: list[int] | None = None,
                    step: int = -1) -> Scored:
        try:
            scored, record = await self.pool.score(
                self.model(role), prompt, continuation_ids=continuation_ids, continuation_text=continuation_text,
                top_k=top_k, candidate_ids=candidate_ids or [], deadline=self.deadline,
            )
        except ModelCallError as e:
            raise e.at(role, step) from e
        record.role, record.step = role, step
        self.trace.add_call(record)
        return scored

    async def tokenize(self, role: str, prompt: PromptInput) -> list[int]:
        try:
            return await self.pool.tokenize(self.model(role), prompt, deadline=self.deadline)
        except ModelCallError as e:
            raise e.at(role, -1) from e

    async def info(self, role: str) -> ModelInfo:
        return await self.pool.info(self.model(role))


class Strategy(ABC):
    """One way of answering. Subclasses set `name`, `roles`, `Options` and implement `run`."""

    name: ClassVar[str]
    #: The roles this strategy needs models for, e.g. ("model",) or ("small", "large").
    roles: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(self, options: StrategyOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, *layers: dict[str, Any] | None) -> StrategyOptions:
        """Merge knob dicts (config defaults, then request overrides) and validate them once."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer or {})
        try:
            return cls.Options(**merged)
        except ValidationError as e:
            fields = sorted(cls.Options.model_fields)
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}" for err in e.errors())
            raise InvalidRoute(f"invalid options for strategy {cls.name!r}: {problems}. Valid knobs: {fields}") from e

    async def check_plan(self, infos: dict[str, ModelInfo]) -> None:
        """Refuse, at plan time, model assignments this strategy cannot run (raise PlanError)."""

    @abstractmethod
    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        """Answer `query`. Reach models only through `ctx`. Raise RoutingError subclasses on failure."""
