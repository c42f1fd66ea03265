"""Tool calls for models that only read and write text: the tool-call format registry.

A `ToolCallFormat` says, for one model family, how the declared tools are put in front of the
model, how earlier calls and their results are written into the conversation, what a forced
call must look like (a JSON schema over the declared tools' names and argument schemas, which
the worker enforces with structured outputs) and how calls are read back from free text.

`FAMILIES` maps model ids to formats. A model that matches no family gets `GENERIC`, the
documented Hermes-style format (docs/openai_api.md, "Tool calls"):

- the tools go into the system prompt, one JSON object per line inside `<tools></tools>`;
- the model calls a function by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  (one block per call);
- an earlier call is written the same way in its assistant turn, and a tool result is a `tool`
  turn holding `<tool_response>{"name": ..., "content": ...}</tool_response>`.

Both embedded models (SmolLM2-135M-Instruct, Gemma 3 270M base) have no native tool format, so
they use the generic one. Everything here is pure logic: no I/O, no model calls.
"""
from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from workers.types import ChatMessage

#: How many calls a forced parallel turn may hold (the JSON array's maxItems).
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True)
class Tool:
    """One declared function tool."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True)
class ToolCall:
    """One call of a declared tool, as OpenAI returns it (`arguments` is JSON text of an object)."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallFormat(ABC):
    """How one model family is told about tools and how its calls are read back."""

    #: Registry name (shown in errors and the docs).
    name: str = ""

    @abstractmethod
    def system_text(self, tools: list[Tool]) -> str:
        """Text appended to the system prompt that declares `tools` and says how to call them."""

    @abstractmethod
    def assistant_text(self, content: str, calls: list[ToolCall]) -> str:
        """An earlier assistant turn that made `calls` (after `content`), as the model would have written it."""

    @abstractmethod
    def tool_result(self, name: str, content: str) -> ChatMessage:
        """The conversation turn that gives the model one tool's result."""

    @abstractmethod
    def call_schema(self, tools: list[Tool], parallel: bool) -> dict[str, Any]:
        """JSON schema of the whole output of a forced turn (`tool_choice` required or named)."""

    @abstractmethod
    def parse_forced(self, text: str, tools: list[Tool]) -> list[ToolCall]:
        """Calls in the output of a forced turn; [] when it is not one (e.g. cut by max_tokens)."""

    @abstractmethod
    def parse(self, text: str, tools: list[Tool], bare: bool = True) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) read from free text: the text outside calls, and the calls of declared tools.
        `bare`: also accept a call written without the format's markers (small models often do)."""

    @abstractmethod
    def call_or_answer_grammar(self, tools: list[Tool], answer_schema: dict[str, Any], parallel: bool) -> str:
        """A grammar (xgrammar EBNF) whose sentences are either tool call(s) or one JSON answer valid for
        `answer_schema` (`tools` together with `response_format`)."""

    def call_prefix(self) -> str:
        """Text a call starts with in free text (a streaming parser holds back text that may begin it)."""
        return ""


def _call_object_schema(tool: Tool) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def calls_schema(tools: list[Tool], parallel: bool) -> dict[str, Any]:
    """`{"name": <one of tools>, "arguments": <its parameters>}`, or an array of 1..MAX_PARALLEL_CALLS of them."""
    options = [_call_object_schema(t) for t in tools]
    one = options[0] if len(options) == 1 else {"anyOf": options}
    if not parallel:
        return one
    return {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}


def _arguments_text(arguments: Any) -> str | None:
    """JSON text of an arguments object (accepting an object or JSON text of one); None if it is neither."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


def call_from_object(obj: Any, names: set[str]) -> ToolCall | None:
    """A ToolCall from `{"name": ..., "arguments": {...}}` when `name` is declared; None otherwise."""
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = _arguments_text(obj.get("arguments", obj.get("parameters", {})))
    if args is None:
        return None
    return ToolCall(id=new_call_id(), name=obj["name"], arguments=args)


class HermesFormat(ToolCallFormat):
    """The generic format (see the module docstring): `<tool_call>{json}</tool_call>` blocks."""

    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)

    def system_text(self, tools: list[Tool]) -> str:
        lines = [json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters},
                            ensure_ascii=False) for t in tools]
        return ("You can call functions to help with the user's request. The functions, as JSON schemas:\n"
                "<tools>\n" + "\n".join(lines) + "\n</tools>\n"
                "To call a function, answer with a JSON object naming the function and its arguments inside "
                "<tool_call></tool_call> tags, and nothing else:\n"
                "<tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments>}}\n</tool_call>\n"
                "When a <tool_response> answers what the user asked, answer the user in plain text.")

    def assistant_text(self, content: str, calls: list[ToolCall]) -> str:
        blocks = []
        for c in calls:
            try:
                args = json.loads(c.arguments) if c.arguments else {}
            except json.JSONDecodeError:
                args = c.arguments
            blocks.append(f"{self.OPEN}\n{json.dumps({'name': c.name, 'arguments': args}, ensure_ascii=False)}\n{self.CLOSE}")
        return "\n".join([content, *blocks] if content else blocks)

    def tool_result(self, name: str, content: str) -> ChatMessage:
        body = json.dumps({"name": name, "content": content}, ensure_ascii=False)
        return ChatMessage("tool", f"<tool_response>\n{body}\n</tool_response>")

    def call_schema(self, tools: list[Tool], parallel: bool) -> dict[str, Any]:
        return calls_schema(tools, parallel)

    def parse_forced(self, text: str, tools: list[Tool]) -> list[ToolCall]:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return []
        names = {t.name for t in tools}
        items = data if isinstance(data, list) else [data]
        calls = [call_from_object(o, names) for o in items]
        return [] if not calls or None in calls else calls

    def parse(self, text: str, tools: list[Tool], bare: bool = True) -> tuple[str | None, list[ToolCall]]:
        names = {t.name for t in tools}
        if self.OPEN not in text:
            if not bare:
                return text, []
            # Small models often answer with the bare object: accept it when it is exactly one call.
            stripped = text.strip()
            if stripped.startswith("{"):
                try:
                    call = call_from_object(json.loads(stripped), names)
                except json.JSONDecodeError:
                    call = None
                if call is not None:
                    return None, [call]
            return text, []
        calls: list[ToolCall] = []
        for m in self._BLOCK.finditer(text):
            try:
                obj = json.loads(m.group(1))
            except json.JSONDecodeError:
                return text, []  # a malformed block: hand the text back rather than guess
            items = obj if isinstance(obj, list) else [obj]
            for o in items:
                call = call_from_object(o, names)
                if call is None:
                    return text, []  # an undeclared tool or bad arguments: not a call we may return
                calls.append(call)
        content = self._BLOCK.sub("", text).strip()
        return (content or None), calls

    def call_or_answer_grammar(self, tools: list[Tool], answer_schema: dict[str, Any], parallel: bool) -> str:
        import xgrammar as xg  # builds and prints EBNF; the worker compiles the same dialect

        calls = xg.Grammar.from_json_schema(json.dumps(calls_schema(tools, False)), any_whitespace=False)
        block = xg.Grammar.concat(xg.Grammar.from_ebnf(f'root ::= "{self.OPEN}\\n"'), calls,
                                  xg.Grammar.from_ebnf(f'root ::= "\\n{self.CLOSE}"'))
        if parallel:
            sep = xg.Grammar.from_ebnf('root ::= "\\n"')
            block = xg.Grammar.union(block, xg.Grammar.concat(block, sep, block))
        answer = xg.Grammar.from_json_schema(json.dumps(answer_schema), any_whitespace=False)
        return str(xg.Grammar.union(block, answer))

    def call_prefix(self) -> str:
        return self.OPEN


GENERIC = HermesFormat()


class Llama3JsonFormat(ToolCallFormat):
    """Llama 3.x's JSON tool calling: the model answers with one bare `{"name": ..., "parameters": {...}}`
    object; tool results are `tool` turns (the Llama 3 chat template calls them `ipython`). One call per turn."""

    name = "llama3_json"

    def system_text(self, tools: list[Tool]) -> str:
        specs = "\n\n".join(json.dumps({"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}, ensure_ascii=False)
            for t in tools)
        return ("Given the following functions, please respond with a JSON for a function call with its proper "
                "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
                "\"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n" + specs)

    def assistant_text(self, content: str, calls: list[ToolCall]) -> str:
        parts = [content] if content else []
        for c in calls:
            try:
                args = json.loads(c.arguments) if c.arguments else {}
            except json.JSONDecodeError:
                args = c.arguments
            parts.append(json.dumps({"name": c.name, "parameters": args}, ensure_ascii=False))
        return "\n".join(parts)

    def tool_result(self, name: str, content: str) -> ChatMessage:
        return ChatMessage("tool", content)

    def call_prefix(self) -> str:
        return "{"

    def call_schema(self, tools: list[Tool], parallel: bool) -> dict[str, Any]:
        options = [{"type": "object", "properties": {"name": {"const": t.name}, "parameters": t.parameters},
                    "required": ["name", "parameters"], "additionalProperties": False} for t in tools]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def parse_forced(self, text: str, tools: list[Tool]) -> list[ToolCall]:
        try:
            call = call_from_object(json.loads(text), {t.name for t in tools})
        except json.JSONDecodeError:
            return []
        return [call] if call is not None else []

    def parse(self, text: str, tools: list[Tool], bare: bool = True) -> tuple[str | None, list[ToolCall]]:
        calls = self.parse_forced(text.strip(), tools) if text.strip().startswith("{") else []
        return (None, calls) if calls else (text, [])

    def call_or_answer_grammar(self, tools: list[Tool], answer_schema: dict[str, Any], parallel: bool) -> str:
        import xgrammar as xg

        call = xg.Grammar.from_json_schema(json.dumps(self.call_schema(tools, False)), any_whitespace=False)
        answer = xg.Grammar.from_json_schema(json.dumps(answer_schema), any_whitespace=False)
        return str(xg.Grammar.union(call, answer))


LLAMA3_JSON = Llama3JsonFormat()


@dataclass(frozen=True)
class Family:
    """A model family's tool support: which model ids, which format, whether it may make parallel calls."""

    pattern: str                 # regular expression matched against the model id (re.match)
    format: ToolCallFormat
    parallel: bool = True
    note: str = ""


#: Model families with a known tool-call format, first match wins. Add a family's native format here.
FAMILIES: list[Family] = [
    Family(r"smollm2-", GENERIC, parallel=True,
           note="SmolLM2: no native tool format; the generic one (measured on the 135M model: asked for two "
                "things under a JSON-array constraint of calls, it wrote one call)"),
    Family(r"gemma3-", GENERIC, parallel=True, note="Gemma 3 270M base: no native tool format; the generic one"),
    Family(r"llama-?3", LLAMA3_JSON, parallel=False,
           note="Llama 3.x JSON tool calling: one call per turn (Llama 3.x has no parallel tool calls)"),
]


def family_for(model_id: str) -> Family:
    """The registered family of `model_id`, or the generic Hermes-style format (parallel calls allowed)."""
    for fam in FAMILIES:
        if re.match(fam.pattern, model_id):
            return fam
    return Family(r".*", GENERIC, parallel=True, note="no registered family: the generic Hermes-style format")


@dataclass
class ToolTurn:
    """What one chat request asks of tools, validated, for the models it may reach.

    `choice` is "none" | "auto" | "required" | "function" (then `function` names it).
    """

    tools: list[Tool]
    choice: str
    function: str | None
    parallel: bool
    format: ToolCallFormat
    answer_schema: dict[str, Any] | None = None  # response_format's schema, when given
    #: A forced turn may hold several calls (a JSON array): only when the request asked for parallel calls.
    several: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """True when the model may call a tool this turn."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.choice in ("required", "function")

    def forced_tools(self) -> list[Tool]:
        if self.choice == "function":
            return [t for t in self.tools if t.name == self.function]
        return self.tools

    def result(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of the model's output for this turn."""
        if not self.active:
            return text, []
        if self.forced:
            calls = self.format.parse_forced(text, self.forced_tools())
            if not calls:
                return text, []
            return None, calls if self.parallel else calls[:1]
        # With response_format the grammar marks calls, so a bare JSON object is the answer, never a call.
        content, calls = self.format.parse(text, self.tools, bare=self.answer_schema is None)
        if not calls:
            return text, []
        return content, calls if self.parallel else calls[:1]
