"""One chat turn's tools, history and output constraint, from OpenAI request fields (plain data).

    tool_turn(tools, tool_choice, parallel_tool_calls, response_format, family) -> ToolTurn
    render_messages(messages, turn) -> [ChatMessage]     (tool calls/results written in the family's format)
    output_constraint(turn) -> Constraint | None         (what the worker must enforce)

Used by the Chat Completions adapter (router/http_api.py) and by any other ingress that speaks
OpenAI's tool vocabulary. Every error is a `BadField` naming the request field.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

from router.chat.schema import BadField, answer_schema, check_schema, json_constraint
from router.chat.tools import Family, Tool, ToolCall, ToolTurn
from workers.types import ChatMessage, Constraint

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def parse_tools(tools: list[Any] | None) -> list[Tool]:
    """OpenAI `tools` ([{"type": "function", "function": {name, description, parameters}}]) -> [Tool]."""
    if not tools:
        return []
    if len(tools) > MAX_TOOLS:
        raise BadField("tools", f"tools has {len(tools)} entries; at most {MAX_TOOLS} are accepted")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
            raise BadField(f"tools[{i}]", f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                                          "\"parameters\": {...}}}}: only function tools are served",
                           code="unsupported_value")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BadField(f"tools[{i}].function.name", f"tools[{i}].function.name must be 1-64 characters of "
                                                         "a-z, A-Z, 0-9, _ and -")
        if any(o.name == name for o in out):
            raise BadField(f"tools[{i}].function.name", f"tools[{i}].function.name {name!r} is declared twice: "
                                                         "give each tool one name")
        desc = fn.get("description") or ""
        if not isinstance(desc, str):
            raise BadField(f"tools[{i}].function.description", f"tools[{i}].function.description must be a string")
        params = fn.get("parameters")
        params = _EMPTY_PARAMETERS if params is None else check_schema(params, f"tools[{i}].function.parameters")
        if params.get("type", "object") != "object":
            raise BadField(f"tools[{i}].function.parameters", f"tools[{i}].function.parameters must describe a JSON "
                                                               "object (\"type\": \"object\")")
        out.append(Tool(name=name, description=desc, parameters=params))
    return out


def parse_tool_choice(choice: Any, tools: list[Tool]) -> tuple[str, str | None]:
    """("none" | "auto" | "required" | "function", function name)."""
    if choice is None:
        return ("auto" if tools else "none"), None
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise BadField("tool_choice", "tool_choice \"required\" needs at least one tool in `tools`")
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        known = [t.name for t in tools]
        if name not in known:
            raise BadField("tool_choice", f"tool_choice names function {name!r}, which is not declared in `tools` "
                                          f"(declared: {known})")
        return "function", name
    raise BadField("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}")


def tool_turn(tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool | None,
              response_format: dict[str, Any] | None, family: Family) -> ToolTurn:
    """Validate the request's tool fields for a model `family`; BadField naming the field otherwise."""
    declared = parse_tools(tools)
    choice, function = parse_tool_choice(tool_choice, declared)
    if parallel_tool_calls and not family.parallel and declared and choice != "none":
        raise BadField("parallel_tool_calls", f"parallel_tool_calls is true, but the model answering this request "
                                              f"makes one tool call per turn ({family.note}); send "
                                              "parallel_tool_calls: false or omit it", code="unsupported_value")
    # Omitted: OpenAI's default (calls may be parallel) where the family can; a forced turn then still asks for
    # one call, and for an array of calls only when the request says parallel_tool_calls: true.
    parallel = family.parallel if parallel_tool_calls is None else bool(parallel_tool_calls)
    return ToolTurn(tools=declared, choice=choice, function=function, parallel=parallel, format=family.format,
                    answer_schema=answer_schema(response_format), several=bool(parallel_tool_calls) and family.parallel)


def render_messages(messages: Iterable[dict[str, Any]], turn: ToolTurn) -> list[ChatMessage]:
    """OpenAI messages -> ChatMessages the worker renders; tool calls and results in the turn's format.

    Each message is a dict with `role`, `content` (text) and, where present, `tool_calls`
    (assistant) or `tool_call_id` (tool). A tool message must answer a call made earlier in the
    conversation. The tools' declaration goes at the end of the (first) system message.
    """
    fmt = turn.format
    calls_by_id: dict[str, str] = {}
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        role, text = m["role"], m.get("content") or ""
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not c.get("id"):
                    raise BadField(f"messages[{i}].tool_calls[{j}]", f"messages[{i}].tool_calls[{j}] needs an `id` and "
                                                                     "`function: {name, arguments}`")
                args = fn.get("arguments") or "{}"
                calls.append(ToolCall(id=str(c["id"]), name=fn["name"],
                                      arguments=args if isinstance(args, str) else json.dumps(args)))
                calls_by_id[str(c["id"])] = fn["name"]
            out.append(ChatMessage("assistant", fmt.assistant_text(text, calls)))
        elif role in ("tool", "function"):
            call_id = m.get("tool_call_id")
            if role == "function":  # the legacy form names the function instead of a call id
                name = m.get("name")
            else:
                if not call_id or call_id not in calls_by_id:
                    known = sorted(calls_by_id)
                    raise BadField(f"messages[{i}].tool_call_id",
                                   f"messages[{i}] is a tool result for tool_call_id {call_id!r}, which no earlier "
                                   f"assistant message called (calls so far: {known or 'none'}): send the assistant "
                                   "message with its `tool_calls` before their results")
                name = calls_by_id[call_id]
            out.append(fmt.tool_result(str(name or ""), text))
        else:
            out.append(ChatMessage(role, text))
    if turn.active:
        declaration = fmt.system_text(turn.tools)
        first = next((k for k, msg in enumerate(out) if msg.role == "system"), None)
        if first is None:
            out.insert(0, ChatMessage("system", declaration))
        else:
            out[first] = ChatMessage("system", f"{out[first].content}\n\n{declaration}".strip())
    return out


def output_constraint(turn: ToolTurn) -> Constraint | None:
    """What the worker must enforce: a forced call's schema, call-or-answer grammar, the answer's schema, or None."""
    if turn.forced:
        return json_constraint(turn.format.call_schema(turn.forced_tools(), turn.several))
    if turn.active and turn.answer_schema is not None:
        return Constraint(grammar=turn.format.call_or_answer_grammar(turn.tools, turn.answer_schema, turn.several))
    if turn.answer_schema is not None:
        return json_constraint(turn.answer_schema)
    return None
