"""`direct`: one model answers the query (the drafter or the reasoner alone)."""
from __future__ import annotations

from pydantic import Field, field_validator

from router.strategies.base import CONFIG_ONLY, Context, Strategy, StrategyOptions, StrategyResult
from router.types import RouteQuery
from workers.thinking import MAX_BUDGET, MODE_PATTERN
from workers.types import Sampling


class DirectOptions(StrategyOptions):
    thinking_budget: int = Field(0, ge=0, le=32768)
    """Cap on generated tokens for this answer (0 = the request's max_tokens)."""
    thinking: str = Field("", max_length=24, pattern=MODE_PATTERN.replace("^(", "^(|"))
    """Reasoning mode: off | on | budget=<N> (thinking tokens, 1..32768) | effort=<low|medium|high>; "" = the
    model's default. The worker enforces it per the model's thinking config; a mode the model does not
    serve is a 400 / INVALID_ARGUMENT naming the model and its modes."""
    system_prompt: str = Field("", max_length=8000, json_schema_extra=CONFIG_ONLY)
    """Prepended as a system message when the conversation has none (config only)."""


    @field_validator("thinking")
    @classmethod
    def _budget_in_range(cls, v: str) -> str:
        if v.startswith("budget=") and not 1 <= int(v[len("budget="):]) <= MAX_BUDGET:
            raise ValueError(f"thinking budget must be in [1, {MAX_BUDGET}]")
        return v


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
                     constraint=query.constraint, seed=query.seed, stop=conv.stop, thinking=o.thinking),
            stream=True,
        )
        return StrategyResult(text=completion.text, finish_reason=completion.finish_reason)
