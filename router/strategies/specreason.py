"""`specreason`: the small model drafts each reasoning step, the large model judges it (SpecReason,
Pan et al. 2025; reference code ruipeterpan/specreason).

Per step: the small model writes one step (stop "\\n\\n", up to `max_step_tokens`); the large model
scores it with one prefill-only Score call (no generation): the conversation so far as an
unfinished `<think>` assistant turn, the judge instruction as a user turn, and the assistant
prefix "I think the quality score is: ", reading the next-token log-probs of the digits 0-9.
A score >= `threshold` keeps the draft; otherwise the large model writes that step itself.
The transcript ends on `\\boxed`/"Answer:", a repeated step, EOS, one of the caller's stop strings,
`max_steps`, or the token budget. Each kept step is streamed as soon as it is kept.
The threshold is the strategy's own accuracy/latency knob: 0 keeps every draft (the small
model's own step-by-step output), 10 rejects every draft (the large model's own output).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from router.strategies.base import Context, PromptBuilder, Strategy, StrategyOptions, StrategyResult, fill_template
from router.strategies.steps import (
    FINISH_MARKERS, SPECREASON_PROMPT, STEP_SEPARATOR, caller_stop, ended_by_eos, judge_prompt, sampling,
    single_token_ids, step_prompt, token_budget,
)
from router.types import RouteQuery

DIGITS = [str(d) for d in range(10)]


class SpecReasonOptions(StrategyOptions):
    threshold: float = Field(7.0, ge=0.0, le=10.0)
    """Keep a drafted step when its judge score is >= this (0 keeps all drafts, 10 rejects all)."""
    score_mode: Literal["greedy", "expected"] = "greedy"
    """`greedy`: the most likely digit; `expected`: sum of d * p(d) over the renormalised digit probs."""
    token_budget: int = Field(8192, ge=1, le=32768)
    """Cap on the transcript's tokens (kept steps only, as in the reference); the request's max_tokens also caps it."""
    max_step_tokens: int = Field(512, ge=1, le=32768)
    """Cap on one step's tokens (drafted or regenerated)."""
    first_n_large: int = Field(0, ge=0, le=32)
    """The first N steps are written by the large model directly (no draft, no judge)."""
    max_steps: int = Field(32, ge=1, le=32)
    """Cap on the number of steps: a run makes at most 3 x max_steps + 10 model calls."""


class SpecReason(Strategy):
    name = "specreason"
    roles = ("small", "large")
    Options = SpecReasonOptions

    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        o: SpecReasonOptions = self.options  # type: ignore[assignment]
        conv = ctx.prompts(query)
        user_msg = fill_template(SPECREASON_PROMPT, problem=conv.question)
        budget = token_budget(query, o.token_budget)
        digit_ids = await single_token_ids(ctx, "large", DIGITS)
        steps: list[str] = []
        log: list[dict] = []
        used, stop_reason, finish = 0, "max_steps", "length"
        for i in range(o.max_steps):
            prompt = step_prompt(conv, user_msg, steps)
            params = sampling(query, min(o.max_step_tokens, budget - used), stop=(STEP_SEPARATOR, *conv.stop))
            entry: dict = {"step": i}
            if i < o.first_n_large:
                chosen = await ctx.generate("large", prompt, params, step=i)
                entry.update(by="large", decision="large_first", text=chosen.text)
            else:
                draft = await ctx.generate("small", prompt, params, step=i)
                score, probs, top = await self._judge(ctx, conv, user_msg, steps + [draft.text], digit_ids, i)
                accepted = score >= o.threshold
                entry.update(drafted=draft.text, draft_tokens=draft.generated_tokens, score=round(score, 4),
                             digit_probs=[round(p, 6) for p in probs], judge_top_token=top,
                             accepted=accepted, decision="accepted" if accepted else "regenerated")
                if accepted:
                    chosen = draft
                    entry["by"] = "small"
                else:
                    chosen = await ctx.generate("large", prompt, params, step=i)
                    entry.update(by="large", text=chosen.text)
            text = chosen.text
            if "</think>" in text and not any(m in text for m in FINISH_MARKERS):
                text = text.replace("</think>", "")  # reference: a stray end-of-thinking mid-answer
            steps.append(text)
            await ctx.emit_text(text if len(steps) == 1 else STEP_SEPARATOR + text)  # a kept step is final
            entry["tokens"] = chosen.generated_tokens
            log.append(entry)
            used += chosen.generated_tokens
            if caller_stop(chosen, conv.stop):
                stop_reason, finish = "stop_string", "stop"
            elif any(m in text for m in FINISH_MARKERS):
                stop_reason, finish = "answer", "stop"
            elif len(steps) >= 2 and steps[-1] == steps[-2]:
                stop_reason, finish = "repeated_step", "stop"
            elif ended_by_eos(chosen):
                stop_reason, finish = "eos", "stop"
            elif used >= budget:
                stop_reason, finish = "budget", "length"
            else:
                continue
            break
        judged = [e for e in log if "accepted" in e]
        ctx.trace.details["specreason"] = {
            "threshold": o.threshold, "score_mode": o.score_mode, "steps": log,
            "acceptance_rate": (sum(e["accepted"] for e in judged) / len(judged)) if judged else None,
            "stop_reason": stop_reason, "tokens": used,
        }
        return StrategyResult(text=STEP_SEPARATOR.join(steps), finish_reason=finish)

    async def _judge(self, ctx: Context, conv: PromptBuilder, user_msg: str, steps: list[str], digit_ids: list[int],
                     step: int) -> tuple[float, list[float], str]:
        """Score the last of `steps`: (score, renormalised digit probabilities, the judge's top token)."""
        scored = await ctx.score("large", judge_prompt(conv, user_msg, steps), top_k=1, candidate_ids=digit_ids,
                                 step=step)
        probs = digit_probs([c.logprob for c in scored.candidates])
        top = scored.top_next[0].token if scored.top_next else ""
        return judge_score(probs, self.options.score_mode), probs, top  # type: ignore[attr-defined]


def digit_probs(logprobs: list[float]) -> list[float]:
    """Softmax of the digits' next-token log-probs, i.e. their probabilities renormalised to sum 1."""
    m = max(logprobs)
    ex = [math.exp(lp - m) for lp in logprobs]
    total = sum(ex)
    return [e / total for e in ex]


def judge_score(probs: list[float], mode: str) -> float:
    """`greedy`: the argmax digit (lowest on ties); `expected`: the expectation of the digit."""
    if mode == "greedy":
        return float(max(range(len(probs)), key=lambda d: (probs[d], -d)))
    return sum(d * p for d, p in enumerate(probs))
