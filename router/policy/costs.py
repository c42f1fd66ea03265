"""Prices and the cost of one answer: tokens x price x samples (+ verifier passes).

cost = samples * (prompt_tokens * price_in + output_tokens * price_out)
       + verifier_passes * (prompt_tokens + output_tokens) * price_in
Prices are USD per million tokens and always come from config (router/configs/routing/*.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SystemPrice:
    #: USD per million prompt (input) tokens.
    price_in: float
    #: USD per million generated (output) tokens.
    price_out: float
    #: Generations paid per answer (best-of-n verification: 100).
    samples: int = 1
    #: Verifier forward passes over prompt + solution per answer (verification: 100).
    verifier_passes: int = 0
    #: Rough latency model for hard limits: fixed ms + ms per output token (sequential samples not assumed).
    latency_ms_base: float = 200.0
    latency_ms_per_token: float = 20.0

    def __post_init__(self):
        if self.price_in < 0 or self.price_out < 0 or self.samples < 1 or self.verifier_passes < 0:
            raise ValueError(f"invalid price entry {self}: prices >= 0, samples >= 1, verifier_passes >= 0")

    def cost(self, prompt_tokens, output_tokens):
        p = np.asarray(prompt_tokens, np.float64)
        o = np.asarray(output_tokens, np.float64)
        per_sample = p * self.price_in + o * self.price_out
        return (self.samples * per_sample + self.verifier_passes * (p + o) * self.price_in) / 1e6

    def latency_ms(self, output_tokens):
        return self.latency_ms_base + self.latency_ms_per_token * np.asarray(output_tokens, np.float64)


def in_out(price) -> tuple[float, float]:
    """(USD per million prompt tokens, per million generated tokens) of one `policy.prices` entry: a number
    (both), a `ModelPrice` / object with price_in and price_out, or a dict with `in`/`out` (or price_in/price_out)."""
    if price is None:
        return 0.0, 0.0
    if isinstance(price, (int, float)):
        return float(price), float(price)
    if isinstance(price, dict):
        pin = price.get("in", price.get("price_in", 0.0))
        return float(pin), float(price.get("out", price.get("price_out", pin)))
    return float(price.price_in), float(price.price_out)


def token_cost(price, prompt_tokens: float, generated_tokens: float) -> float:
    """USD of one model call at `price` (a `policy.prices` entry): prompt x in + generated x out, per 1e6."""
    pin, pout = in_out(price)
    return (prompt_tokens * pin + generated_tokens * pout) / 1e6
