"""The assistant's output in OpenAI's shape: a message (content and/or tool calls) and, streamed,
the `chat.completion.chunk` sequence.

Streaming rules (what the OpenAI client libraries expect):
- the first chunk carries `role: "assistant"`;
- text deltas follow as they come, except text that may be (the start of) a tool call: in an
  `auto` turn it is held back from the call marker on and parsed at the end; a forced turn
  (`tool_choice` required or named) is all call, so nothing of it is sent before the end;
- each tool call is sent as two deltas: the first with `index`, `id`, `type` and the function
  `name` (arguments ""), the second with the `arguments` text;
- the finishing chunk has `finish_reason` (`tool_calls` when the turn made calls) and the
  answering `model`; `usage` (with `cost`) rides on the last chunk: on a `choices: []` chunk
  when the client asked for `stream_options.include_usage`, else on the finishing chunk.
"""
from __future__ import annotations

from typing import Any

from router.chat.tools import ToolCall, ToolTurn


def finish_reason(engine_reason: str, calls: list[ToolCall]) -> str:
    if calls:
        return "tool_calls"
    return "length" if engine_reason == "length" else "stop"


def assistant_message(turn: ToolTurn | None, text: str) -> tuple[dict[str, Any], list[ToolCall]]:
    """The OpenAI assistant message for the model's output `text`, and the tool calls in it."""
    content, calls = turn.result(text) if turn is not None else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [c.to_openai() for c in calls]
    return message, calls


def tool_call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Two deltas per call: id/type/name first, then the arguments."""
    out = []
    for i, c in enumerate(calls):
        out.append({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                    "function": {"name": c.name, "arguments": ""}}]})
        out.append({"tool_calls": [{"index": i, "function": {"arguments": c.arguments}}]})
    return out


class HoldBack:
    """Releases free text of an `auto` tool turn as it streams, holding back whatever may be a call.

    Text before the call marker is released at once (except a tail that could be the marker's start);
    from the marker on everything is held. With `bare`, output that starts with `{` is held too (a call
    written without markers). `held` is what was not released; `released + held` is the whole text.
    """

    def __init__(self, marker: str, bare: bool) -> None:
        self.marker, self.bare = marker, bare
        self.held = ""
        self.holding = False
        self.started = False

    def feed(self, delta: str) -> str:
        self.held += delta
        if self.holding:
            return ""
        if not self.started:
            lead = self.held.lstrip()
            if not lead or (self.marker.startswith(lead) and self.marker):
                return ""  # undecided: blank so far, or the start of the marker
            if self.bare and lead.startswith("{"):
                self.holding = True
                return ""
        idx = self.held.find(self.marker) if self.marker else -1
        if idx >= 0:
            out, self.held, self.holding = self.held[:idx], self.held[idx:], True
        else:
            keep = next((k for k in range(min(len(self.marker) - 1, len(self.held)), 0, -1)
                         if self.held.endswith(self.marker[:k])), 0)
            out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        if out.strip():
            self.started = True
        return out


class ChunkWriter:
    """The chunk sequence of one streamed chat completion (see the module docstring)."""

    def __init__(self, head: dict[str, Any], turn: ToolTurn | None, include_usage: bool) -> None:
        self.head, self.turn, self.include_usage = head, turn, include_usage
        self.forced = bool(turn and turn.forced)
        self.hold = (HoldBack(turn.format.call_prefix(), bare=turn.answer_schema is None)
                     if turn is not None and turn.active and not turn.forced else None)
        self.buffer: list[str] = []   # everything the model wrote
        self.sent: list[str] = []     # the content sent so far

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
        obj = {**self.head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if self.include_usage:
            obj["usage"] = None
        obj.update(more)
        return obj

    def start(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, text: str) -> list[dict[str, Any]]:
        self.buffer.append(text)
        if self.forced:
            return []
        if self.hold is not None:
            text = self.hold.feed(text)
        if not text:
            return []
        self.sent.append(text)
        return [self._chunk({"content": text})]

    def finish(self, engine_reason: str, usage: dict[str, Any], model: str,
               more: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The remaining content or tool calls, the finishing chunk, and usage on the last chunk."""
        text = "".join(self.buffer)
        _, calls = assistant_message(self.turn, text)
        out = []
        if calls:
            # Text outside the calls that was held back (e.g. a sentence before the call marker).
            rest = self.turn.format.parse(self.hold.held, self.turn.tools)[0] if self.hold is not None else None
            if rest and rest.strip():
                out.append(self._chunk({"content": rest}))
            out += [self._chunk(d) for d in tool_call_deltas(calls)]
        else:
            unsent = text[len("".join(self.sent)):]
            if unsent:
                out.append(self._chunk({"content": unsent}))
        extra = dict(more or {}, model=model)
        if not self.include_usage:
            extra["usage"] = usage
        out.append(self._chunk({}, finish_reason(engine_reason, calls), **extra))
        if self.include_usage:
            out.append({**self.head, "model": model, "choices": [], "usage": usage})
        return out
