"""`specthink`: Speculative Thinking (2504.12329; reference code uservan/speculative_thinking).

The small model reasons. Each time it writes a trigger (a blank line, "\\n\\n") it writes a short
look-ahead (`lookahead_tokens`, 20). When the look-ahead contains reflective or affirming
keywords (negative: "wait", "alternatively", "hold on", ...; verify: "verify", "check", ...;
positive: "yes", "final answer", ...) the large model writes that segment instead
(`takeover_tokens`, 20). When the chosen segment starts verifying (a verify keyword), the large
model goes on for `verify_tokens` (125). After `recap_after_negative` negative segments the
large model writes a recap (`recap_text`, then `recap_tokens`), and both of those grow (by
`recap_tokens_step` / `recap_after_negative_step`, up to their caps) as in the reference config.

Hand-off is at the text level by default (`handoff="text"`): the transcript is one string, each
model re-renders it with its own chat template and tokenizer (its prefix cache makes that
cheap), so any pair works, including one with different tokenizers. `handoff="token"` shares
token ids as the reference code does and needs one tokenizer: `check_plan` refuses a pair whose
tokenizers differ, naming both.

The transcript is streamed as it grows (every piece added to it is final). It ends on EOS, one of
the caller's stop strings, `max_segments`, or the token budget.

Departure from the reference, documented: a look-ahead without keywords is kept (up to and
including its first trigger) instead of discarded and regenerated; under greedy decoding the
regenerated text is the same, so this only saves the small model's tokens.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from router.errors import PlanError
from router.strategies.base import (
    CONFIG_ONLY, Context, PromptBuilder, Strategy, StrategyOptions, StrategyResult, fill_template,
)
from router.strategies.steps import (
    STEP_SEPARATOR, caller_stop, cut_after_first, ended_by_eos, find_keywords, sampling, token_budget,
)
from router.types import Completion, ModelInfo, RouteQuery
from workers.types import PromptInput

#: The question turn (reference: "Please reason step by step, and put your final answer within \\boxed{}.").
SPECTHINK_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}.\n{problem}"

#: A trigger: a short non-empty marker (e.g. "\n\n").
Trigger = Annotated[str, StringConstraints(min_length=1, max_length=16)]
#: A keyword: a word or short phrase (matched case-insensitively at a word start).
Keyword = Annotated[str, StringConstraints(max_length=32)]


class SpecThinkOptions(StrategyOptions):
    handoff: Literal["text", "token"] = "text"
    """`text`: share the transcript as text (any pair); `token`: share token ids (pairs with one tokenizer)."""
    triggers: list[Trigger] = Field(default_factory=lambda: [STEP_SEPARATOR], min_length=1, max_length=4)
    """Where the small model pauses to look ahead (reference: "\\n\\n")."""
    negative_keywords: list[Keyword] = Field(default_factory=lambda: ["wait", "alternatively", "hold on", "another"],
                                             max_length=32)
    """Reflective words: a look-ahead with one hands the segment to the large model; counts toward a recap."""
    verify_keywords: list[Keyword] = Field(default_factory=lambda: ["verify", "think again", "recap", "check"],
                                           max_length=32)
    """Verifying words: hand over, and the large model writes `verify_tokens` more."""
    positive_keywords: list[Keyword] = Field(default_factory=lambda: ["yeah", "yes", "final answer", "confident"],
                                             max_length=32)
    """Affirming words: hand the segment to the large model."""
    lookahead_tokens: int = Field(20, ge=1, le=1024)
    """Tokens the small model writes after a trigger before the keyword check."""
    takeover_tokens: int = Field(20, ge=1, le=4096)
    """Tokens the large model writes when it takes a segment over."""
    verify_tokens: int = Field(125, ge=0, le=8192)
    """Further large-model tokens when the chosen segment starts verifying (0 = never)."""
    recap_after_negative: int = Field(15, ge=1, le=64)
    """Negative segments before the large model writes a recap."""
    recap_after_negative_step: int = Field(5, ge=0, le=64)
    """Added to `recap_after_negative` after each recap (up to `max_recap_after_negative`)."""
    max_recap_after_negative: int = Field(30, ge=1, le=64)
    """Cap on `recap_after_negative` as it grows."""
    recap_tokens: int = Field(125, ge=1, le=8192)
    """Tokens of the first recap."""
    recap_tokens_step: int = Field(25, ge=0, le=1024)
    """Added to the recap length after each recap (up to `max_recap_tokens`)."""
    max_recap_tokens: int = Field(200, ge=1, le=8192)
    """Cap on the recap length as it grows."""
    recap_text: str = Field("Let me check whether there are some wrong steps:", max_length=1000,
                            json_schema_extra=CONFIG_ONLY)
    """Written into the transcript before the large model's recap (config only)."""
    choose_large: bool = True
    """Always keep the large model's segment when it is consulted (reference default). False keeps it only
    when the two segments' sentiments disagree (small negative and large not, or small positive and large negative)."""
    begin_large_tokens: int = Field(0, ge=0, le=8192)
    """The large model writes the first N tokens of the reasoning (reference `begin`; 0 = off)."""
    max_segment_tokens: int = Field(1024, ge=1, le=32768)
    """Cap on one small-model segment (between triggers)."""
    max_segments: int = Field(24, ge=1, le=24)
    """Cap on the segments (look-ahead points): a run makes at most 5 x max_segments + 2 model calls."""
    token_budget: int = Field(0, ge=0, le=32768)
    """Cap on the transcript's generated tokens (0 = the request's max_tokens)."""

    @model_validator(mode="after")
    def _triggers_not_blank(self) -> "SpecThinkOptions":
        if not [t for t in self.triggers if t]:
            raise ValueError("triggers needs at least one non-empty string, e.g. ['\\n\\n']")
        return self


def sentiment(text: str, o: SpecThinkOptions) -> tuple[int, list[str]]:
    """(+1 affirming, -1 reflective/verifying, 0 neither) and the keywords found, in order.
    Reflective words win a tie, as a segment that doubts itself is the one that needs the reasoner."""
    pos = find_keywords(text, o.positive_keywords)
    neg = find_keywords(text, [*o.negative_keywords, *o.verify_keywords])
    found = find_keywords(text, [*o.negative_keywords, *o.verify_keywords, *o.positive_keywords])
    if not pos and not neg:
        return 0, []
    return (1 if len(pos) > len(neg) else -1), found


class _Transcript:
    """The shared reasoning so far: text (any pair), plus token ids in token hand-off (one tokenizer)."""

    def __init__(self, ctx: Context, conv: PromptBuilder, user_msg: str, token_ids: list[int] | None) -> None:
        self.ctx, self.conv, self.user_msg, self.text, self.ids = ctx, conv, user_msg, "", token_ids

    def prompt(self) -> PromptInput:
        if self.ids is not None:
            return PromptInput(token_ids=tuple(self.ids))
        return self.conv.turn(self.user_msg, self.text)

    async def add(self, text: str, completion: Completion | None = None) -> None:
        """Append `text` (and stream it: the transcript is the answer); in token hand-off, `completion`'s
        own ids when `text` is its whole output, else the text re-tokenized (without the BOS a worker
        prepends to text prompts)."""
        self.text += text
        await self.ctx.emit_text(text)
        if self.ids is None or not text:
            return
        if completion is not None and text == completion.text and completion.token_ids:
            self.ids.extend(completion.token_ids)
            return
        tok = await self.ctx.tokenize("small", PromptInput(text=text))
        if len(tok) > 1 and self.ids and tok[0] == self.ids[0]:
            tok = tok[1:]
        self.ids.extend(tok)


class SpeculativeThinking(Strategy):
    name = "specthink"
    roles = ("small", "large")
    Options = SpecThinkOptions

    async def check_plan(self, infos: dict[str, ModelInfo]) -> None:
        o: SpecThinkOptions = self.options  # type: ignore[assignment]
        small, large = infos.get("small"), infos.get("large")
        if o.handoff == "token" and small and large and small.tokenizer_id != large.tokenizer_id:
            raise PlanError(
                f"specthink with handoff='token' needs one tokenizer, but small model {small.model!r} uses "
                f"{small.tokenizer_id!r} and large model {large.model!r} uses {large.tokenizer_id!r}; "
                f"use handoff='text' (the default) or a pair that shares a tokenizer"
            )

    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        o: SpecThinkOptions = self.options  # type: ignore[assignment]
        conv = ctx.prompts(query)
        user_msg = fill_template(SPECTHINK_PROMPT, problem=conv.question)
        budget = token_budget(query, o.token_budget)
        tr = await self._transcript(ctx, conv, user_msg)
        takeovers: list[dict] = []
        used = {"small": 0, "large": 0}
        neg_count, recap_after, recap_tokens = 0, o.recap_after_negative, o.recap_tokens
        lookaheads = 0
        stop_reason = "budget"

        def left() -> int:
            return budget - used["small"] - used["large"]

        async def call(role: str, n: int, step: int, stop: tuple[str, ...] = ()) -> Completion:
            """One generation over the transcript; the caller's stop strings always apply."""
            c = await ctx.generate(role, tr.prompt(), sampling(query, min(n, left()), (*stop, *conv.stop)), step=step)
            used[role] += c.generated_tokens
            return c

        def ended(c: Completion) -> str | None:
            """Why `c` (just added to the transcript) ends it: "stop_string", "eos", or None."""
            return "stop_string" if caller_stop(c, conv.stop) else ("eos" if ended_by_eos(c) else None)

        async def take_over(reason: str, n: int, step: int, trigger: list[str]) -> Completion:
            c = await call("large", n, step)
            await tr.add(c.text, c)
            takeovers.append({"step": step, "reason": reason, "trigger": trigger, "tokens": c.generated_tokens,
                              "text": c.text})
            return c

        step = 0
        if o.begin_large_tokens:
            stop_reason = ended(await take_over("begin", o.begin_large_tokens, step, [])) or stop_reason
        at_trigger = False
        while stop_reason == "budget" and left() > 0:
            if step >= o.max_segments:
                stop_reason = "max_segments"
                break
            if not at_trigger:
                seg = await call("small", o.max_segment_tokens, step, tuple(o.triggers))
                if caller_stop(seg, conv.stop):  # the caller's stop wins over a trigger; it is not kept
                    await tr.add(seg.text, seg)
                    stop_reason = "stop_string"
                    break
                await tr.add(seg.text + seg.stop_string, seg)  # the trigger stays in the transcript
                if not seg.stop_string:
                    stop_reason = "eos" if ended_by_eos(seg) else "budget"
                    break
                if left() <= 0:
                    break
            at_trigger = False
            step += 1
            if neg_count >= recap_after:
                await tr.add(o.recap_text)
                c = await take_over("recap", recap_tokens, step, [])
                neg_count = 0
                recap_tokens = min(recap_tokens + o.recap_tokens_step, o.max_recap_tokens)
                recap_after = min(recap_after + o.recap_after_negative_step, o.max_recap_after_negative)
                stop_reason = ended(c) or stop_reason
                continue
            look = await call("small", o.lookahead_tokens, step)
            lookaheads += 1
            s_sent, found = sentiment(look.text, o)
            if s_sent == 0:
                kept, hit = cut_after_first(look.text, o.triggers)
                await tr.add(kept, look)
                at_trigger = hit
                if not hit:
                    stop_reason = ended(look) or stop_reason
                continue
            big = await call("large", o.takeover_tokens, step)
            l_sent, _ = sentiment(big.text, o)
            if o.choose_large or (s_sent < 0 <= l_sent) or (s_sent > 0 > l_sent):
                await tr.add(big.text, big)
                chosen, final = big, l_sent
                takeovers.append({"step": step, "reason": "keyword", "trigger": found, "tokens": big.generated_tokens,
                                  "text": big.text, "lookahead": look.text})
            else:
                await tr.add(look.text, look)
                chosen, final = look, s_sent
            if final < 0:
                neg_count += 1
            if ended(chosen):
                stop_reason = ended(chosen) or stop_reason
                break
            if o.verify_tokens and find_keywords(chosen.text, o.verify_keywords) and left() > 0:
                c = await take_over("verify", o.verify_tokens, step, find_keywords(chosen.text, o.verify_keywords))
                stop_reason = ended(c) or stop_reason
        ctx.trace.details["specthink"] = {
            "handoff": o.handoff, "takeovers": takeovers, "takeover_count": len(takeovers),
            "lookaheads": lookaheads, "segments": step, "tokens": dict(used), "stop_reason": stop_reason,
        }
        finish = "stop" if stop_reason in ("eos", "stop_string") else "length"
        return StrategyResult(text=tr.text, finish_reason=finish)

    async def _transcript(self, ctx: Context, conv: PromptBuilder, user_msg: str) -> _Transcript:
        if self.options.handoff == "text":  # type: ignore[attr-defined]
            return _Transcript(ctx, conv, user_msg, None)
        # Token hand-off: one tokenizer (check_plan refused otherwise); the prompt ids come from the small model.
        return _Transcript(ctx, conv, user_msg, list(await ctx.tokenize("small", conv.turn(user_msg))))


__all__ = ["SpeculativeThinking", "SpecThinkOptions", "sentiment"]
