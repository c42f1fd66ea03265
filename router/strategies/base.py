"""The `Strategy` ABC and the `Context` through which a strategy reaches models.

A strategy is one way of answering: a small class with knobs (`Options`, a pydantic model
parsed once at the boundary) and one coroutine `run(query, ctx) -> StrategyResult`.
It never talks to workers itself: `ctx.generate` / `ctx.score` / `ctx.tokenize` go
through the worker pool (gRPC), respect the request deadline, and record every call in
the trace (role, step, tokens, latency). Per-step decisions go in `ctx.trace.details`.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Literal, Protocol, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from router.errors import InvalidRoute, ModelCallError
from router.trace import ModelCallRecord, Trace
from router.types import Completion, ModelInfo, RouteQuery, Scored
from workers.types import ChatMessage, PromptInput, Sampling

log = logging.getLogger(__name__)

#: `json_schema_extra` of a knob that only the router config may set (prompt templates and other
#: prompt text): a request naming it is refused (`StrategyOptions.parse`).
CONFIG_ONLY: dict[str, Any] = {"config_only": True}


class StrategyOptions(BaseModel):
    """Base for per-strategy knobs: the one schema that bounds them.

    Every knob a request may set has a type and a range (pydantic `ge`/`le`, `max_length`); unknown
    knobs are refused with the valid names; knobs marked `CONFIG_ONLY` (prompt templates) are refused
    when a request sets them. `knob_table()` renders the schema for docs/strategies.md.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @classmethod
    def config_only_knobs(cls) -> list[str]:
        return [n for n, f in cls.model_fields.items() if _is_config_only(f)]

    @classmethod
    def knob_table(cls) -> list[dict[str, str]]:
        """One row per knob: name, type, range, default, who may set it, description."""
        rows = []
        for name, f in cls.model_fields.items():
            kind, rng = describe_knob(f)
            default = f.get_default(call_default_factory=True)
            rows.append({"knob": name, "type": kind, "range": rng, "default": _short(default),
                         "set by": "config only" if _is_config_only(f) else "config or request",
                         "description": " ".join((f.description or "").split())})
        return rows


def _is_config_only(f: FieldInfo) -> bool:
    extra = f.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("config_only"))


def _short(value: Any, limit: int = 40) -> str:
    """A short repr (a long value is cut before it is repr'd, so this never copies much)."""
    if isinstance(value, (str, list, tuple)) and len(value) > limit:
        value = value[:limit]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            v = getattr(m, attr, None)
            if v is not None:
                out[attr] = v
    return out


def _num_range(b: dict[str, Any]) -> str:
    lo = f"[{b['ge']}" if "ge" in b else (f"({b['gt']}" if "gt" in b else "(-inf")
    hi = f"{b['le']}]" if "le" in b else (f"{b['lt']})" if "lt" in b else "inf)")
    return f"{lo}, {hi}"


def _len_range(b: dict[str, Any], unit: str) -> str:
    lo, hi = b.get("min_length", 0), b.get("max_length")
    return f"{lo}-{hi} {unit}" if hi is not None else f">= {lo} {unit} (unbounded)"


def describe_knob(f: FieldInfo) -> tuple[str, str]:
    """(type, range) of one knob, read from its schema, e.g. ("int", "[1, 64]")."""
    ann, b = f.annotation, _bounds(f.metadata)
    if get_origin(ann) is Literal:
        return "one of", " / ".join(repr(a) for a in get_args(ann))
    if ann is bool:
        return "bool", "true / false"
    if ann in (int, float):
        return ann.__name__, _num_range(b)
    if ann is str:
        return "str", _len_range(b, "chars")
    if get_origin(ann) is list:
        (item,) = get_args(ann)
        item_b = _bounds(list(getattr(item, "__metadata__", ())))
        return "list[str]", f"{_len_range(b, 'items')}, each {_len_range(item_b, 'chars')}"
    return str(ann), "see schema"


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
                    deadline: float, cache_salt: str = "") -> tuple[Scored, ModelCallRecord]: ...

    async def tokenize(self, model: str, prompt: PromptInput, *, deadline: float) -> list[int]: ...

    async def info(self, model: str) -> ModelInfo: ...


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_template(template: str, **values: str) -> str:
    """`template` with each `{name}` of `values` replaced by its value, literally, in one pass.

    Nothing is formatted: `{question:>9}`, `{question.__class__}`, `{{`, `}}` and unknown `{names}`
    stay as written, and text inserted for one placeholder is never scanned again (a question that
    contains "{outline}" stays as it is). Templates come from config only (see `CONFIG_ONLY`).
    """
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


class PromptBuilder:
    """Renders the request's whole conversation around a strategy's own turn.

    A strategy's prompt is: the conversation before its last user turn (system prompt, history,
    tool calls and results), then the strategy's user turn (its template filled with `question`,
    the last user turn's text) in place of that turn, then whatever followed it, then optional
    extra messages (an open assistant turn to continue, a judge turn). Each worker renders the
    messages with its own chat template (or the plain-text fallback of a base model). `stop` is the
    caller's stop strings, for the calls whose text becomes the answer.
    """

    def __init__(self, query: RouteQuery) -> None:
        self.before, self.question, self.after = query.split_conversation()
        self.stop: tuple[str, ...] = tuple(query.stop)
        self._query = query

    def conversation(self, system_prompt: str = "") -> PromptInput:
        """The conversation as sent, ready for the assistant's reply; `system_prompt` is added in front
        when the conversation has no system message."""
        msgs = self._query.conversation()
        if system_prompt and msgs[0].role != "system":
            msgs = [ChatMessage("system", system_prompt), *msgs]
        return PromptInput(messages=tuple(msgs), add_generation_prompt=True)

    def messages(self, user_text: str, *tail: ChatMessage) -> tuple[ChatMessage, ...]:
        """The conversation with its last user turn replaced by `user_text`, then `tail`."""
        return (*self.before, ChatMessage("user", user_text), *self.after, *tail)

    def turn(self, user_text: str, assistant_text: str = "") -> PromptInput:
        """The strategy's user turn in the conversation, ready for the reply; with `assistant_text`,
        an unfinished assistant turn the model continues (no end-of-turn token)."""
        if not assistant_text:
            return PromptInput(messages=self.messages(user_text), add_generation_prompt=True)
        return PromptInput(messages=self.messages(user_text, ChatMessage("assistant", assistant_text)),
                           add_generation_prompt=False, continue_final_message=True)


class Context:
    """Per-request handle given to `Strategy.run`.

    `models` maps the strategy's roles to model names (e.g. {"small": ..., "large": ...}).
    `emit` (optional) receives the answer's text deltas for streaming ingresses: a strategy
    passes `stream=True` to the generate call(s) whose text is the answer, or calls `emit_text`
    with text it has committed to the answer. Whatever it returns beyond what was emitted is
    flushed by `Strategy.answer`, so streamed deltas always concatenate to the answer.
    """

    def __init__(self, pool: ModelAccess, models: dict[str, str], trace: Trace, deadline: float,
                 emit: Callable[[str], Awaitable[None]] | None = None, cache_salt: str = "") -> None:
        self.pool, self.models, self.trace, self.deadline, self.emit = pool, models, trace, deadline, emit
        #: The tenant's prefix-cache salt (router/cache_salt.py), put on every generate call.
        self.cache_salt = cache_salt
        self._emitted: list[str] = []
        self._prompts: PromptBuilder | None = None

    def prompts(self, query: RouteQuery) -> PromptBuilder:
        """The prompt builder for this request's conversation (one per request)."""
        if self._prompts is None or self._prompts._query is not query:
            self._prompts = PromptBuilder(query)
        return self._prompts

    @property
    def emitted(self) -> str:
        """The answer text streamed so far."""
        return "".join(self._emitted)

    async def emit_text(self, text: str) -> None:
        """Stream `text` as the next piece of the answer (no-op without a streaming ingress)."""
        if self.emit is not None and text:
            self._emitted.append(text)
            await self.emit(text)

    async def flush(self, text: str) -> None:
        """Stream whatever of the final answer `text` has not been emitted yet."""
        if self.emit is None:
            return
        done = self.emitted
        if text.startswith(done):
            await self.emit_text(text[len(done):])
            return
        # A strategy streamed text that is not its answer: a bug; say so in the trace and the log.
        self.trace.details["stream_mismatch"] = {"emitted_chars": len(done), "answer_chars": len(text)}
        log.error("streamed text is not a prefix of the answer (%d vs %d chars)", len(done), len(text))

    def model(self, role: str) -> str:
        try:
            return self.models[role]
        except KeyError:
            raise InvalidRoute(f"the plan names no model for role {role!r}; it has {sorted(self.models)}") from None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    async def generate(self, role: str, prompt: PromptInput, sampling: Sampling, *, step: int = -1,
                       stream: bool = False) -> Completion:
        if self.cache_salt and not sampling.cache_salt:
            sampling = dataclasses.replace(sampling, cache_salt=self.cache_salt)
        try:
            completion, record = await self.pool.generate(
                self.model(role), prompt, sampling, deadline=self.deadline,
                on_delta=self.emit_text if (stream and self.emit) else None,
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
            salt = {"cache_salt": self.cache_salt} if self.cache_salt else {}  # the tenant's, as in generate
            scored, record = await self.pool.score(
                self.model(role), prompt, continuation_ids=continuation_ids, continuation_text=continuation_text,
                top_k=top_k, candidate_ids=candidate_ids or [], deadline=self.deadline, **salt,
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
    def parse_options(cls, *config_layers: dict[str, Any] | None,
                      request: dict[str, Any] | None = None) -> StrategyOptions:
        """Merge knob dicts (config layers in order, then the request's) and validate them once,
        against the strategy's `Options` schema. Raises InvalidRoute naming each bad knob with its
        type and range, an unknown knob with the valid names, and a config-only knob (a prompt
        template) set by the request."""
        fields = cls.Options.model_fields
        if request:
            locked = [k for k in request if k in fields and _is_config_only(fields[k])]
            if locked:
                raise InvalidRoute(
                    f"strategy {cls.name!r}: {', '.join(locked)} may be set in the router config only "
                    f"(router.strategies.{cls.name}.{locked[0]}), not per request: prompt templates are "
                    f"configuration; remove {locked} from the request's options"
                    + (" (send a system message in `messages` instead)" if "system_prompt" in locked else ""))
        merged: dict[str, Any] = {}
        for layer in (*config_layers, request):
            merged.update(layer or {})
        try:
            return cls.Options(**merged)
        except ValidationError as e:
            raise InvalidRoute(f"invalid options for strategy {cls.name!r}: {_problems(cls.Options, e)}. "
                               f"Valid knobs: {sorted(fields)}") from e

    async def check_plan(self, infos: dict[str, ModelInfo]) -> None:
        """Refuse, at plan time, model assignments this strategy cannot run (raise PlanError)."""

    @abstractmethod
    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        """Answer `query`. Reach models only through `ctx`. Raise RoutingError subclasses on failure."""

    async def answer(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        """`run`, then stream whatever of the answer it did not emit itself: what the router calls.
        With a streaming ingress, the emitted deltas concatenate to `result.text`."""
        result = await self.run(query, ctx)
        await ctx.flush(result.text)
        return result


def _problems(options: type[StrategyOptions], e: ValidationError) -> str:
    """One line per validation error: the knob, what is wrong, its type and range, the value given."""
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        knob = loc[0] if loc else "options"
        where = ".".join(loc) or "options"
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown knob")
            continue
        f = options.model_fields.get(knob)
        expected = ""
        if f is not None:
            kind, rng = describe_knob(f)
            expected = f" (expected {kind}, {rng})"
        given = err.get("input")
        given_s = "" if isinstance(given, dict) else f"; got {_short(given)}"
        out.append(f"{where}: {err['msg']}{expected}{given_s}")
    return "; ".join(out)
