"""`direct`: one model answers the query (the drafter or the reasoner alone)."""
from __future__ import annotations

from pydantic import Field

from router.strategies.base import Context, Strategy, StrategyOptions, StrategyResult
from router.types import RouteQuery
from workers.types import PromptInput, Sampling


class DirectOptions(StrategyOptions):
    thinking_budget: int = Field(0, ge=0)
    """Cap on generated tokens for this answer (0 = the request's max_tokens)."""
    system_prompt: str = ""
    """Prepended as a system message when the query has none."""


class Direct(Strategy):
    name = "direct"
    roles = ("model",)
    Options = DirectOptions

    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        messages = query.conversation()
        if self.options.system_prompt and messages[0].role != "system":
            from workers.types import ChatMessage

            messages = [ChatMessage("system", self.options.system_prompt), *messages]
        max_tokens = query.max_tokens
        if self.options.thinking_budget:
            max_tokens = min(max_tokens, self.options.thinking_budget)
        completion = await ctx.generate(
            "model",
            PromptInput(messages=tuple(messages), add_generation_prompt=True),
            Sampling(max_tokens=max_tokens, temperature=query.temperature, top_p=query.top_p,
                     seed=query.seed, stop=tuple(query.stop)),
            stream=True,
        )
        return StrategyResult(text=completion.text, finish_reason=completion.finish_reason)
