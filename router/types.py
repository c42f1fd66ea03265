"""Router-side request and result types (plain dataclasses; the ingresses convert wire formats)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from workers.types import ChatMessage, Constraint, TokenLogprob


@dataclass
class RouteQuery:
    """One routed request, as both ingresses (gRPC, OpenAI HTTP) hand it to the router."""

    query: str = ""                                # the question (the last user turn when messages are given)
    messages: list[ChatMessage] | None = None      # a whole conversation, when given
    strategy: str | None = None                    # fixed plan: strategy name
    model: str | None = None                       # fixed plan: model name (for `direct`)
    options: dict[str, Any] = field(default_factory=dict)  # strategy knobs
    max_tokens: int = 0                            # 0 = config default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dial: float | None = None
    tenant: str = ""
    max_cost: float = 0.0
    max_latency_ms: float = 0.0
    #: Structured output the answering model call must satisfy (JSON schema, grammar, ...); None = free text.
    constraint: Constraint | None = None
    #: Names of the tools the model may call this turn (declared in the conversation); () = none. Only plans
    #: whose answer is one model call that honours `constraint` (`direct`) can run such a turn (router/planner.py).
    tools: tuple[str, ...] = ()
    session: str = ""                              # agent session key (router/sessions.py); "" = derive
    #: The task (workload) of this request: the policy's per-task correction learns from feedback on it.
    task: str = ""
    #: A target instead of a raw dial (router/policy/calibrate.py): the cheapest calibrated operating point
    #: reaching this fraction of the best plan's accuracy, or the most accurate one within this USD per 1k requests.
    quality_target: float | None = None
    budget_per_1k: float | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def conversation(self) -> list[ChatMessage]:
        """The messages to send to a chat model: the conversation, or the query as one user turn."""
        if self.messages:
            return list(self.messages)
        return [ChatMessage(role="user", content=self.query)]

    def split_conversation(self) -> tuple[list[ChatMessage], str, list[ChatMessage]]:
        """(before, question, after): the conversation around its last user turn.

        `before` holds the system prompt and the history up to the last user turn, `question` is that
        turn's text, `after` what follows it (e.g. an assistant tool call and the tool's result). A
        conversation without a user turn has its last message as the question. A strategy puts its own
        template (filled with `question`) where the last user turn was, so nothing else is dropped.
        """
        msgs = self.conversation()
        idx = max((i for i, m in enumerate(msgs) if m.role == "user"), default=len(msgs) - 1)
        return msgs[:idx], msgs[idx].content, msgs[idx + 1:]

    def rendered_text(self) -> str:
        """The whole conversation as one plain text, for features and prompt-cost estimates.

        A lone user turn is its text unchanged (what probes were trained on); a conversation is
        `Role: content` blocks separated by blank lines, the same plain form base models are given
        (workers/prompts.py), so the system prompt, the history and tool results all count.
        """
        msgs = self.conversation()
        if len(msgs) == 1 and msgs[0].role == "user":
            return msgs[0].content
        return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in msgs)


@dataclass
class Completion:
    """What one Generate call returned."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int = 0
    stop_string: str = ""


@dataclass
class Scored:
    """What one Score call returned."""

    continuation: list[TokenLogprob]
    top_next: list[TokenLogprob]
    candidates: list[TokenLogprob]
    prompt_tokens: int


@dataclass
class ModelInfo:
    model: str
    tokenizer_id: str
    context_length: int
    has_chat_template: bool
    backend: str
    device: str


@dataclass
class RouteResult:
    request_id: str
    text: str
    final_answer: str
    finish_reason: str
    trace: dict[str, Any]
