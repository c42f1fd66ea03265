"""Shared helpers of the pair strategies: prompts, step contexts, keyword matching, budgets.

Every prompt here is built as chat messages (`PromptInput(messages=...)`) by the request's
`PromptBuilder` (`ctx.prompts(query)`): the whole conversation (system prompt, history, tool
results) with the strategy's own turn in place of the last user turn. Each worker renders it with
its own model's chat template (or the plain-text fallback of a base model, see `workers/prompts.py`)
and its own tokenizer. That is what lets a pair with different tokenizers share one transcript as text.
Templates are filled literally (`fill_template`), never with `str.format`.
"""
from __future__ import annotations

import asyncio
import re
from typing import Iterable

from router.errors import PlanError
from router.strategies.base import Context, PromptBuilder
from router.types import Completion, RouteQuery
from workers.types import ChatMessage, PromptInput, Sampling

#: The step separator of SpecReason and the trigger of Speculative Thinking: a blank line.
STEP_SEPARATOR = "\n\n"

#: Markers that end a SpecReason transcript (reference code: "boxed", "Answer:", "ANSWER:").
FINISH_MARKERS = ("\\boxed", "Answer:", "ANSWER:")

#: Used when neither the request nor the strategy's knobs give a token budget.
FALLBACK_MAX_TOKENS = 1024


def token_budget(query: RouteQuery, knob: int) -> int:
    """The tighter of the request's `max_tokens` and the strategy's knob (0 = unset on either side)."""
    limits = [n for n in (query.max_tokens, knob) if n > 0]
    return min(limits) if limits else FALLBACK_MAX_TOKENS


def sampling(query: RouteQuery, max_tokens: int, stop: Iterable[str] = ()) -> Sampling:
    """The request's sampling settings with this call's token cap and stop strings."""
    return Sampling(max_tokens=max(1, max_tokens), temperature=query.temperature, top_p=query.top_p,
                    seed=query.seed, stop=tuple(stop))


def ended_by_eos(c: Completion) -> bool:
    """True when the model itself ended the text (EOS), not a stop string or the token cap."""
    return c.finish_reason == "stop" and not c.stop_string


def caller_stop(c: Completion, stop: Iterable[str]) -> bool:
    """True when `c` ended on one of the caller's stop strings (the answer ends there)."""
    return bool(c.stop_string) and c.stop_string in tuple(stop)


# --- SpecReason -------------------------------------------------------------------------------

#: The first user turn (reference: ruipeterpan/specreason `get_first_user_msg`).
SPECREASON_PROMPT = (
    "Solve the following math problem efficiently and clearly. Please reason step by step, separate logical "
    "reasoning steps with two newline characters (a blank line), and put your final answer within \\boxed{}.\n"
    "Problem: {problem}"
)

#: The judge's user turn (DESIGN.md, "Strategies"; verbatim from the reference code).
JUDGE_INSTRUCTION = (
    "Evaluate the last reasoning step solely based on factual correctness and logical validity. Ignore style, "
    "phrasing, or overall usefulness—only judge whether the step is objectively correct and logically follows "
    "from prior steps. Assign a score from 0 to 9."
)

#: The start of the judge's answer; the next token is read as the score.
JUDGE_PREFIX = "I think the quality score is: "


def steps_text(steps: list[str]) -> str:
    """The reasoning so far as an unfinished `<think>` block: steps joined and ended by a blank line."""
    return "<think>" + STEP_SEPARATOR.join(steps) + STEP_SEPARATOR


def step_prompt(conv: PromptBuilder, user_msg: str, steps: list[str]) -> PromptInput:
    """The prompt that asks for the next step (both the drafter and the regenerating reasoner use it):
    the conversation with `user_msg` as its last user turn, the steps so far as an open assistant turn
    (the first step opens with a plain generation prompt, as in the reference code)."""
    return conv.turn(user_msg, steps_text(steps) if steps else "")


def judge_prompt(conv: PromptBuilder, user_msg: str, steps: list[str]) -> PromptInput:
    """Prefill-only judge prompt: the conversation, steps so far (the last one being judged) as an
    unfinished `<think>` turn, the judge instruction as a user turn, then the open assistant prefix
    `JUDGE_PREFIX`."""
    return PromptInput(
        messages=conv.messages(
            user_msg,
            ChatMessage("assistant", steps_text(steps)),
            ChatMessage("user", JUDGE_INSTRUCTION),
            ChatMessage("assistant", JUDGE_PREFIX),
        ),
        add_generation_prompt=False,
        continue_final_message=True,
    )


async def single_token_ids(ctx: Context, role: str, texts: list[str]) -> list[int]:
    """The one token id each of `texts` is in `role`'s tokenizer (e.g. the digits "0".."9").

    The worker may prepend BOS to a text prompt; the prefix shared by all results is dropped.
    Raises PlanError when a text is not exactly one token in that tokenizer.
    """
    ids = await asyncio.gather(*(ctx.tokenize(role, PromptInput(text=t)) for t in texts))
    common = 0
    while all(len(x) > common + 1 for x in ids) and len({x[common] for x in ids}) == 1:
        common += 1
    out = []
    for t, x in zip(texts, ids):
        rest = x[common:]
        if len(rest) != 1:
            raise PlanError(f"{t!r} is {len(rest)} tokens ({rest}) in the tokenizer of model {ctx.model(role)!r}; "
                            f"this strategy needs it to be one token: use a model whose tokenizer has single-digit tokens")
        out.append(rest[0])
    return out


# --- keyword matching (Speculative Thinking) ---------------------------------------------------

def find_keywords(text: str, keywords: Iterable[str]) -> list[str]:
    """The keywords that occur in `text`, case-insensitive, each starting at a word boundary
    ("check" matches "Checking", "yes" does not match "eyes"), in order of first occurrence."""
    low = text.lower()
    hits = []
    for kw in keywords:
        k = kw.lower().strip()
        if not k:
            continue
        m = re.search(r"(?<![a-z0-9])" + re.escape(k), low)
        if m:
            hits.append((m.start(), kw))
    return [kw for _, kw in sorted(hits)]


def cut_after_first(text: str, markers: Iterable[str]) -> tuple[str, bool]:
    """`text` up to and including the first of `markers`, and whether one was found."""
    best = -1
    best_len = 0
    for m in markers:
        pos = text.find(m) if m else -1
        if pos >= 0 and (best < 0 or pos < best):
            best, best_len = pos, len(m)
    if best < 0:
        return text, False
    return text[: best + best_len], True
