"""`POST /v1/responses`: the OpenAI Responses API subset that agent frameworks use, over Chat Completions.

A thin adapter over the Chat Completions adapter (router/http_api.py), so both APIs share one
request path (authentication, rate limits, tools and structured outputs, routing, usage):

    Responses JSON -> `to_chat_request` -> chat completion JSON -> `OpenAIFrontend.chat_completions`
        -> chat.completion (or its chunk stream) -> `chat_to_response` / `ChunkTranslator` -> Responses JSON / events

What it takes (everything else is refused with a 400 naming the field, or ignored when harmless):
- `input`: a string, or a list of items: messages (`role` user / system / developer / assistant,
  content a string or `input_text` / `output_text` parts), `function_call` items (`call_id`,
  `name`, `arguments`) and `function_call_output` items (`call_id`, `output`). `reasoning` items
  are skipped (no model here reasons in a separate channel).
- `instructions` (a system message in front), `tools` (function tools only), `tool_choice`
  (`none` / `auto` / `required` / `{"type": "function", "name": ...}`), `parallel_tool_calls`,
  `text.format` (`text`, `json_object`, `json_schema`), `max_output_tokens`, `temperature`,
  `top_p`, `stream`, `prompt_cache_key` (a session key, router/sessions.py) and the `thinkroute`
  extension object of Chat Completions.
- Stateless: nothing is stored. `store` is accepted and does nothing (the response cannot be
  retrieved or referenced later); `previous_response_id`, `conversation`, `item_reference`
  items and `background` are refused: send the whole conversation in `input` each turn.

What comes back: a `response` object (`output` = a `message` item with `output_text`, and/or one
`function_call` item per tool call; `usage` with `input_tokens`, `output_tokens`, cached tokens
and the router's cost fields), or with `stream: true` the semantic events: `response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta` / `.done`, `response.function_call_arguments.delta` / `.done`,
`response.content_part.done`, `response.output_item.done`, then `response.completed` (or
`response.incomplete` when `max_output_tokens` cut it, `response.failed` on an error after the
stream began), each with a `sequence_number`.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.http_api import ApiError

#: Request fields accepted and ignored (they change nothing a stateless router could honour).
IGNORED_FIELDS = frozenset({"metadata", "user", "include", "reasoning", "truncation", "service_tier",
                            "stream_options", "safety_identifier", "prompt_cache_retention", "top_logprobs",
                            "max_tool_calls", "store", "prompt_cache_options", "context_management"})
KNOWN_FIELDS = IGNORED_FIELDS | {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                                 "text", "max_output_tokens", "temperature", "top_p", "stream", "prompt_cache_key",
                                 "seed", "thinkroute", "previous_response_id", "conversation", "background",
                                 "prompt"}
_TEXT_PARTS = ("input_text", "output_text", "text")
_MESSAGE_ROLES = ("user", "system", "developer", "assistant")


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# -- request: Responses -> Chat Completions --------------------------------------------------------
def _part_text(part: Any, param: str) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise _bad(f"{param} must be a string or a content part object", param)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{param}.text must be a string", f"{param}.text")
        return text
    if kind == "refusal":
        return str(part.get("refusal", ""))
    raise _bad(f"{param} has type {kind!r}: only text parts ({', '.join(_TEXT_PARTS)}) are supported here "
               "(the models served take text only)", f"{param}.type", "unsupported_value")


def _content_text(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_part_text(p, f"{param}.{j}") for j, p in enumerate(content))
    raise _bad(f"{param} must be a string or a list of content parts", param)


def _items_to_messages(items: list[Any]) -> list[dict[str, Any]]:
    """Input items -> chat messages: consecutive function calls join one assistant message."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input.{i}"
        if not isinstance(item, dict):
            raise _bad(f"{param} must be an object (a message, function_call or function_call_output item)", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise _bad(f"{param}.role is {role!r}; valid roles are {list(_MESSAGE_ROLES)}", f"{param}.role")
            messages.append({"role": role, "content": _content_text(item.get("content"), f"{param}.content")})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
            for value, field in ((call_id, "call_id"), (name, "name"), (arguments, "arguments")):
                if not isinstance(value, str) or (field != "arguments" and not value):
                    raise _bad(f"{param}.{field} must be a non-empty string", f"{param}.{field}")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or i > 0 and
                                                                     _is_assistant_text(items[i - 1])):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{param}.call_id must be the call_id of an earlier function_call item",
                           f"{param}.call_id")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _content_text(output, f"{param}.output")})
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise _bad(f"{param} is an item_reference: this router is stateless and stores no items; send the "
                       "item itself", f"{param}.type", "unsupported_value")
        else:
            raise _bad(f"{param} has type {kind!r}; supported input items are message, function_call, "
                       "function_call_output (and reasoning, skipped)", f"{param}.type", "unsupported_value")
    return messages


def _is_assistant_text(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "assistant"


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools must be a list of function tools", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise _bad(f"tools[{i}] has type {kind!r}: only function tools ({{\"type\": \"function\", \"name\", "
                       "\"parameters\"}) are supported; hosted tools (web search, file search, ...) are not",
                       f"tools.{i}.type", "unsupported_value")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name must name one of the function tools", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise _bad(f"tool_choice {choice!r} is not supported; use \"none\", \"auto\", \"required\" or "
               "{\"type\": \"function\", \"name\": \"...\"}", "tool_choice", "unsupported_value")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text must be an object like {\"format\": {\"type\": \"text\"}}", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("text.format must be an object with a `type`", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        if "schema" not in spec:
            raise _bad("text.format.schema is required for a json_schema format", "text.format.schema")
        spec.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": spec}
    raise _bad(f"text.format.type {kind!r} is not supported; use text, json_object or json_schema",
               "text.format.type", "unsupported_value")


def to_chat_request(body: Any) -> dict[str, Any]:
    """A Responses request body -> the equivalent Chat Completions request body. Raises ApiError 400
    naming the Responses field for anything this stateless subset cannot honour."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise _bad(f"unknown field(s) {unknown}; this endpoint takes {sorted(KNOWN_FIELDS)}", unknown[0],
                   "unknown_parameter")
    if body.get("previous_response_id"):
        raise _bad("previous_response_id is not supported: this router is stateless and stores no responses; "
                   "send the whole conversation (earlier input and output items) in `input`",
                   "previous_response_id", "unsupported_value")
    if body.get("conversation"):
        raise _bad("conversation is not supported: this router is stateless; send the whole conversation in `input`",
                   "conversation", "unsupported_value")
    if body.get("prompt"):
        raise _bad("prompt (a stored prompt template) is not supported: nothing is stored here; send `instructions` "
                   "and `input`", "prompt", "unsupported_value")
    if body.get("background"):
        raise _bad("background responses are not supported (nothing is stored to poll); omit `background`",
                   "background", "unsupported_value")
    if not isinstance(body.get("model"), str):
        raise _bad("model is required: a model name from GET /v1/models (e.g. thinkroute)", "model")
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Any] = [{"type": "message", "role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise _bad("input is required: a string or a non-empty list of input items", "input")
    messages = _items_to_messages(items)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions must be a string", "instructions")
        if instructions:
            messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise _bad("input has no message or function call to answer", "input")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "stream": bool(body.get("stream"))}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                     ("max_output_tokens", "max_completion_tokens"), ("parallel_tool_calls", "parallel_tool_calls"),
                     ("prompt_cache_key", "prompt_cache_key"), ("thinkroute", "thinkroute")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None and (tools or choice == "none"):
        chat["tool_choice"] = choice
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if chat["stream"]:
        chat["stream_options"] = {"include_usage": True}
    return chat


# -- response: Chat Completions -> Responses -------------------------------------------------------
def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat `usage` -> Responses `usage`; the router's extra fields (cost, per-model) are kept."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    out = {"input_tokens": usage.get("prompt_tokens", 0),
           "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
           "output_tokens": usage.get("completion_tokens", 0),
           "output_tokens_details": {"reasoning_tokens": (usage.get("completion_tokens_details") or {}).get(
               "reasoning_tokens", 0)},
           "total_tokens": usage.get("total_tokens", 0)}
    for key, value in usage.items():
        if key not in ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
                       "completion_tokens_details"):
            out[key] = value
    return out


def message_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_call_item(call_id: str, name: str, arguments: str, item_id: str,
                       status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


class Echo:
    """The request fields a `response` object echoes back."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.model = body.get("model", "")
        self.fields = {
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "previous_response_id": None,
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "text": body.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled",
            "metadata": body.get("metadata") or {},
            "store": False,
            "background": False,
            "prompt_cache_key": body.get("prompt_cache_key"),
        }

    def response(self, response_id: str, created: int, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None, model: str | None = None, finish: str = "stop",
                 error: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        body = {"id": response_id, "object": "response", "created_at": created, "status": status,
                "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
                "error": error, "incomplete_details": incomplete, "model": model or self.model, "output": output,
                "usage": usage, **self.fields}
        body.update(extra or {})
        return body


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


def _extras(chat: dict[str, Any]) -> dict[str, Any]:
    """The router's extension fields of a chat body/chunk (thinkroute_plan, thinkroute_trace, ...)."""
    return {k: v for k, v in chat.items() if k.startswith("thinkroute")}


def chat_to_response(chat: dict[str, Any], echo: Echo, response_id: str | None = None) -> dict[str, Any]:
    """A `chat.completion` body -> the Responses API `response` object."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content") or not message.get("tool_calls"):
        output.append(message_item(message.get("content") or "", _new_id("msg")))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(function_call_item(call.get("id", ""), fn.get("name", ""), fn.get("arguments", ""),
                                          _new_id("fc")))
    finish = choice.get("finish_reason")
    return echo.response(response_id or _new_id("resp"), int(chat.get("created") or time.time()), _status(finish),
                         output, response_usage(chat.get("usage")), chat.get("model"), extra=_extras(chat))


class ChunkTranslator:
    """Turns the `chat.completion.chunk` stream of one request into Responses streaming events."""

    def __init__(self, echo: Echo, response_id: str | None = None, created: int | None = None) -> None:
        self.echo = echo
        self.id = response_id or _new_id("resp")
        self.created = created or int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text_item: dict[str, Any] | None = None   # the open message item
        self.calls: dict[int, dict[str, Any]] = {}     # open function_call items by chat tool-call index
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.extra: dict[str, Any] = {}

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        shell = self.echo.response(self.id, self.created, "in_progress", [], None)
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def _index(self, item: dict[str, Any]) -> int:
        return self.output.index(item)

    def _open_text(self) -> list[dict[str, Any]]:
        item = message_item("", _new_id("msg"), "in_progress")
        item["content"] = []
        self.output.append(item)
        self.text_item = item
        idx = self._index(item)
        return [self._event("response.output_item.added", output_index=idx, item=json.loads(json.dumps(item))),
                self._event("response.content_part.added", item_id=item["id"], output_index=idx, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})]

    def _close_text(self) -> list[dict[str, Any]]:
        item, self.text_item = self.text_item, None
        if item is None:
            return []
        text = item.pop("_text", "")
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"], item["status"] = [part], "completed"
        idx = self._index(item)
        return [self._event("response.output_text.done", item_id=item["id"], output_index=idx, content_index=0,
                            text=text, logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=idx, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=idx, item=item)]

    def _close_calls(self) -> list[dict[str, Any]]:
        events = []
        for item in self.calls.values():
            item["status"] = "completed"
            idx = self._index(item)
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=idx,
                                      name=item["name"], arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=idx, item=dict(item)))
        self.calls = {}
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Events for one chat chunk (an `{"error": ...}` object ends the stream: `response.failed`)."""
        if "error" in chunk and not chunk.get("choices"):
            return self.fail(chunk["error"])
        events: list[dict[str, Any]] = []
        self.model = chunk.get("model") or self.model
        self.extra.update(_extras(chunk))
        if chunk.get("usage"):
            self.usage = response_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.calls:
                    events += self._close_calls()
                if self.text_item is None:
                    events += self._open_text()
                item = self.text_item
                item["_text"] = item.get("_text", "") + text
                events.append(self._event("response.output_text.delta", item_id=item["id"],
                                          output_index=self._index(item), content_index=0, delta=text, logprobs=[]))
            for call in delta.get("tool_calls") or []:
                events += self._tool_call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _tool_call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            events += self._close_text()
            item = function_call_item(call.get("id") or _new_id("call"), fn.get("name") or "", "", _new_id("fc"),
                                      "in_progress")
            self.output.append(item)
            self.calls[index] = item
            events.append(self._event("response.output_item.added", output_index=self._index(item), item=dict(item)))
        elif fn.get("name"):
            item["name"] += fn["name"]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=self._index(item), delta=fn["arguments"]))
        return events

    def finish_events(self) -> list[dict[str, Any]]:
        """Close the open items and end with `response.completed` (or `response.incomplete`)."""
        events = self._close_text() + self._close_calls()
        if not self.output:
            events += self._open_text() + self._close_text()
        status = _status(self.finish)
        body = self.echo.response(self.id, self.created, status, self.output, self.usage, self.model,
                                  extra=self.extra)
        return events + [self._event(f"response.{status}", response=body)]

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """End the stream with `response.failed` carrying the error."""
        err = {"code": error.get("code") or "server_error", "message": error.get("message", "")}
        body = self.echo.response(self.id, self.created, "failed", self.output, self.usage, self.model, error=err,
                                  extra=self.extra)
        return [self._event("response.failed", response=body)]


def sse_event(event: dict[str, Any]) -> bytes:
    return (f"event: {event['type']}\n".encode() + b"data: "
            + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


async def chat_chunks(body: AsyncIterator[bytes | str]) -> AsyncIterator[dict[str, Any]]:
    """Parse a chat SSE byte stream (`data: {...}` lines, `data: [DONE]`) back into chunk objects."""
    buffer = b""
    async for piece in body:
        buffer += piece.encode() if isinstance(piece, str) else piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[len(b"data: "):]
                    if data.strip() == b"[DONE]":
                        return
                    yield json.loads(data)


# -- the endpoint ----------------------------------------------------------------------------------
class ResponsesEndpoint:
    """`POST /v1/responses` over an `OpenAIFrontend` (its `chat_completions(request)` handler)."""

    def __init__(self, frontend) -> None:
        self.frontend = frontend

    async def create(self, request: Request) -> Response:
        try:
            # who is asking and whether the body is within bounds, before reading it (the chat handler
            # checks the same again, then admits the request: rate limits and quotas apply once)
            self.frontend._tenant(request)
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
            chat = to_chat_request(body)
        except ApiError as e:
            return e.response()
        echo = Echo(body)
        inner = await self.frontend.chat_completions(_with_body(request, json.dumps(chat).encode()))
        if inner.status_code != 200:
            return _renamed_error(inner)  # OpenAI's error shape, its status and headers (auth, rate limit, 400s)
        headers = {k: v for k, v in inner.headers.items() if k.startswith("x-")}
        if not isinstance(inner, StreamingResponse):
            return JSONResponse(chat_to_response(json.loads(inner.body), echo), headers=headers)
        return StreamingResponse(self._events(inner, echo), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", **headers})

    async def _events(self, inner: StreamingResponse, echo: Echo) -> AsyncIterator[bytes]:
        translator = ChunkTranslator(echo)
        stream = inner.body_iterator
        failed = False
        try:
            for event in translator.start():
                yield sse_event(event)
            async for chunk in chat_chunks(stream):
                for event in translator.chunk(chunk):
                    failed = failed or event["type"] == "response.failed"
                    yield sse_event(event)
                if failed:
                    return
            for event in translator.finish_events():
                yield sse_event(event)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # the client went away (or we are done): the chat stream cancels its model calls


#: Chat Completions field names -> the Responses fields they came from (for an error's `param`).
_PARAM_RENAMES = [(re.compile(r"^tools[.\[](\d+)\]?\.function\.?"), r"tools[\1]."),
                  (re.compile(r"^tool_choice\.function\.name"), "tool_choice.name"),
                  (re.compile(r"^response_format\.json_schema\.?"), "text.format."),
                  (re.compile(r"^response_format"), "text.format"),
                  (re.compile(r"^max_completion_tokens"), "max_output_tokens"),
                  (re.compile(r"^messages\b.*"), "input")]


def responses_param(param: str | None) -> str | None:
    """The Responses name of a Chat Completions error `param` (`tools[0].function.name` -> `tools[0].name`)."""
    if not param:
        return param
    for pattern, repl in _PARAM_RENAMES:
        new = pattern.sub(repl, param, count=1)
        if new != param:
            return new.rstrip(".")
    return param


def _renamed_error(inner: Response) -> Response:
    """The chat handler's error with its `param` named in Responses terms (status and headers kept)."""
    try:
        body = json.loads(inner.body)
        body["error"]["param"] = responses_param(body["error"].get("param"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return inner
    headers = {k: v for k, v in inner.headers.items() if k not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=inner.status_code, headers=headers)


def _with_body(request: Request, body: bytes) -> Request:
    """The same HTTP request (headers, client, auth) carrying another body."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await request.receive()  # after the body: the real connection's disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = dict(request.scope)
    scope["path"] = "/v1/chat/completions"
    return Request(scope, receive)
