"""What an answer cost: OpenAI `usage` from the trace, with `cost` in USD and a per-model breakdown.

Token counts are summed over every model call of the trace (every model, every strategy step).
Prices are the policy's (`policy.prices`: USD per million tokens per model pool, a number for prompt and
generated alike or `{in, out}`). A model without a configured price costs 0, and `usage.pricing` says so.
"""
from __future__ import annotations

from typing import Any

from router.policy.costs import token_cost


def usage_from_trace(trace: dict[str, Any], prices: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI usage (+ `cost`, `models`, `pricing`) summed over the trace's per-model usage."""
    prices = prices or {}
    per = trace.get("usage", [])
    models: dict[str, dict[str, Any]] = {}
    for u in per:
        m = models.setdefault(u.get("model", ""), {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
                                                    "reasoning_tokens": 0, "calls": 0, "cost": 0.0})
        m["prompt_tokens"] += u.get("prompt_tokens", 0)
        m["completion_tokens"] += u.get("generated_tokens", 0)
        m["cached_tokens"] += u.get("cached_prompt_tokens", 0)
        m["reasoning_tokens"] += u.get("thinking_tokens", 0)
        m["calls"] += u.get("calls", 0)
    for name, m in models.items():
        m["cost"] = token_cost(prices.get(name), m["prompt_tokens"], m["completion_tokens"])
    prompt = sum(m["prompt_tokens"] for m in models.values())
    completion = sum(m["completion_tokens"] for m in models.values())
    unpriced = sorted(n for n in models if n not in prices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(m["cached_tokens"] for m in models.values())},
            # Of completion_tokens, those the models spent thinking (OpenAI's reasoning_tokens).
            "completion_tokens_details": {"reasoning_tokens": sum(m["reasoning_tokens"] for m in models.values())},
            "cost": sum(m["cost"] for m in models.values()), "models": models,
            "pricing": ("policy.prices (USD per million tokens)" if not unpriced
                        else f"no price configured for {unpriced} (policy.prices): counted as 0")}


def answered_by(trace: dict[str, Any]) -> str:
    """The `model` to report: the model that answered (direct) or `strategy/<name>` (several models)."""
    plan = trace.get("plan", {})
    models = plan.get("models", {})
    if plan.get("strategy") == "direct" and "model" in models:
        return models["model"]
    return f"strategy/{plan.get('strategy', '')}"
