"""Render and tokenize prompts exactly once, the same way for every backend.

- text: tokenized as is (no special tokens added), then BOS prepended if the model needs it.
- chat messages: rendered by the tokenizer's chat template when it has one. Base models
  without a template get a documented plain-text fallback:

      System: {content}\n\nUser: {content}\n\nAssistant: {content}\n\n ... Assistant:

  (a single user message with add_generation_prompt renders as
  `Question: {content}\nAnswer:`, the form base models continue best).
- token ids: checked against the vocabulary, used as given.
"""
from __future__ import annotations

from dataclasses import dataclass

from workers.errors import InvalidRequest
from workers.types import ChatMessage, PromptInput

VALID_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class RenderedPrompt:
    text: str
    token_ids: list[int]


class PromptRenderer:
    """Wraps one Hugging Face tokenizer. Thread-safe for reads (tokenizers are)."""

    def __init__(self, tokenizer, *, chat: bool, prepend_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))
        self.prepend_bos = prepend_bos
        self.bos_id = tokenizer.bos_token_id
        self.vocab_size = len(tokenizer)

    def render(self, prompt: PromptInput, template_kwargs: dict[str, bool] | None = None) -> RenderedPrompt:
        """Raises InvalidRequest for an empty prompt, bad roles or out-of-vocabulary ids. `template_kwargs`
        (chat prompts only: e.g. Qwen3's enable_thinking) are extra chat-template variables."""
        kind = _kind(prompt)
        if kind == "token_ids":
            ids = list(prompt.token_ids or ())
            if not ids:
                raise InvalidRequest("prompt.token_ids is empty: send at least one token id")
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"prompt.token_ids has {len(bad)} id(s) outside the vocabulary [0, {self.vocab_size}): "
                    f"first {bad[:5]}"
                )
            return RenderedPrompt(text=self.tokenizer.decode(ids), token_ids=ids)
        if kind == "text":
            text = prompt.text or ""
            if not text.strip():
                raise InvalidRequest("prompt.text is empty: send a non-blank prompt")
        else:
            text = self.render_chat(prompt.messages or (), prompt.add_generation_prompt, prompt.continue_final_message,
                                    template_kwargs)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.prepend_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        if not ids:
            raise InvalidRequest("the prompt tokenizes to nothing: send a non-blank prompt")
        return RenderedPrompt(text=text, token_ids=ids)

    def render_chat(
        self, messages: tuple[ChatMessage, ...] | list[ChatMessage], add_generation_prompt: bool, continue_final: bool,
        template_kwargs: dict[str, bool] | None = None,
    ) -> str:
        if not messages:
            raise InvalidRequest("prompt.chat.messages is empty: send at least one message")
        for i, m in enumerate(messages):
            if m.role not in VALID_ROLES:
                raise InvalidRequest(f"messages[{i}].role is {m.role!r}; valid roles are {list(VALID_ROLES)}")
        if continue_final and messages[-1].role != "assistant":
            raise InvalidRequest("continue_final_message needs the last message to be an assistant message")
        if continue_final and add_generation_prompt:
            add_generation_prompt = False  # continuing the last turn already leaves the model to speak
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final,
                **(template_kwargs or {}),
            )
        return plain_chat(messages, add_generation_prompt, continue_final)


def plain_chat(messages, add_generation_prompt: bool, continue_final: bool) -> str:
    """The plain-text chat fallback for base models (see the module docstring)."""
    if len(messages) == 1 and messages[0].role == "user" and add_generation_prompt:
        return f"Question: {messages[0].content}\nAnswer:"
    parts = []
    for i, m in enumerate(messages):
        label = m.role.capitalize()
        last = i == len(messages) - 1
        parts.append(f"{label}: {m.content}" if not (last and continue_final) else f"{label}: {m.content}")
    text = "\n\n".join(parts)
    if continue_final:
        return text
    return text + ("\n\nAssistant:" if add_generation_prompt else "")


def _kind(prompt: PromptInput) -> str:
    try:
        return prompt.kind()
    except ValueError as e:
        raise InvalidRequest(str(e)) from e
