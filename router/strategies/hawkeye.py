"""`hawkeye`: the large model thinks concisely, the small model answers (Hawkeye, 2504.00424;
reference code Zhuohao-Li/Hawkeye).

Two calls: the large model writes a concise chain of thought (`cot_tokens` cap) with the paper's
prompt; the small model expands it into the answer (streamed) with the paper's second prompt,
which carries the question and the chain of thought. The paper reports up to 3.4x faster and
60 % cheaper answers than the large model alone: the expensive model writes few tokens.
"""
from __future__ import annotations

from pydantic import Field

from router.strategies.base import Context, Strategy, StrategyOptions, StrategyResult, fill_template
from router.strategies.steps import sampling, token_budget
from router.types import RouteQuery

#: Both prompts verbatim from DESIGN.md / the paper (filled literally: `{question}`, `{cot}`).
COT_PROMPT = "Question: {question}\nPlease generate a concise chain-of-thought reasoning without repeating the question:"
ANSWER_PROMPT = "{question}\n{cot}\nThis is a chain-of-thought that helps you answer. So the answer is:"


class HawkeyeOptions(StrategyOptions):
    cot_tokens: int = Field(256, ge=1, le=8192)
    """Cap on the large model's concise chain of thought."""
    answer_tokens: int = Field(0, ge=0, le=32768)
    """Cap on the small model's answer (0 = the request's max_tokens)."""


class Hawkeye(Strategy):
    name = "hawkeye"
    roles = ("small", "large")
    Options = HawkeyeOptions

    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        o: HawkeyeOptions = self.options  # type: ignore[assignment]
        conv = ctx.prompts(query)
        cot = await ctx.generate("large", conv.turn(fill_template(COT_PROMPT, question=conv.question)),
                                 sampling(query, o.cot_tokens), step=0)
        answer_prompt = fill_template(ANSWER_PROMPT, question=conv.question, cot=cot.text.strip())
        answer = await ctx.generate("small", conv.turn(answer_prompt),
                                    sampling(query, token_budget(query, o.answer_tokens), conv.stop),
                                    step=1, stream=True)
        ctx.trace.details["hawkeye"] = {
            "cot": cot.text, "cot_tokens": cot.generated_tokens, "cot_prompt_tokens": cot.prompt_tokens,
            "answer_prompt": answer_prompt, "answer_prompt_tokens": answer.prompt_tokens,
            "answer_tokens": answer.generated_tokens,
        }
        return StrategyResult(text=answer.text, finish_reason=answer.finish_reason)
