"""`direct`: one model answers the query (the drafter or the reasoner alone)."""
from __future__ import annotations

from pydantic import Field

from router.strategies.base import CONFIG_ONLY, Context, Strategy, StrategyOptions, StrategyResult
from router.types import RouteQuery
from workers.types import Sampling


class DirectOptions(StrategyOptions):
    thinking_budget: int = Field(0, ge=0, le=32768)
    """Cap on generated tokens for this answer (0 = the request's max_tokens)."""
    system_prompt: str = Field("", max_length=8000, json_schema_extra=CONFIG_ONLY)
    """Prepended as a system message when the conversation has none (config only)."""


class Direct(Strategy):
    name = "direct"
    roles = ("model",)
    Options = DirectOptions

    async def run(self, query: RouteQuery, ctx: Context) -> StrategyResult:
        o: DirectOptions = self.options  # type: ignore[assignment]
        conv = ctx.prompts(query)
        max_tokens = query.max_tokens
        if o.thinking_budget:
            max_tokens = min(max_tokens, o.thinking_budget)
        completion = await ctx.generate(
            "model",
            conv.conversation(system_prompt=o.system_prompt),
            Sampling(max_tokens=max_tokens, temperature=query.temperature, top_p=query.top_p,
                     constraint=query.constraint, seed=query.seed, stop=conv.stop),
            stream=True,
        )
        return StrategyResult(text=completion.text, finish_reason=completion.finish_reason)
