"""The dial: one number in [0, 1] that moves every routing decision along the cost-quality frontier.

Utility of a plan = P(correct) - lambda(dial) * cost / cost_scale. `lambda` is the price of cost in
probability points: 0 -> infinity (always the cheapest plan that meets the hard limits), 1 -> 0
(the most likely correct plan regardless of cost), log-uniform in between, from `lam_max` at
dial -> 0 to `lam_min` at dial -> 1. With the defaults (cost in USD): dial 0.5 means "pay up to
$0.10 per request for +1 point of P(correct)" (lambda = 10 per USD).

As in RouteLLM's `router-mf-0.116` model names, the dial can ride in the OpenAI `model` field:
`thinkroute-dial-0.3` (see `parse_dial_model`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from router.errors import InvalidRoute


class DialError(InvalidRoute):
    """An invalid dial value or dial configuration (a ValueError; INVALID_ARGUMENT / HTTP 400 at an ingress)."""


@dataclass(frozen=True)
class DialConfig:
    #: lambda (probability points per `cost_scale` of cost) just above dial 0.
    lam_max: float = 1e5
    #: lambda just below dial 1.
    lam_min: float = 1e-3
    #: The unit of cost in the utility (USD by default).
    cost_scale: float = 1.0

    def __post_init__(self):
        if not (0 < self.lam_min < self.lam_max):
            raise DialError(f"need 0 < lam_min < lam_max, got lam_min={self.lam_min}, lam_max={self.lam_max}")
        if self.cost_scale <= 0:
            raise DialError(f"cost_scale must be > 0, got {self.cost_scale}")


def validate_dial(dial: float) -> float:
    """Return `dial` as a float, or raise DialError naming the valid range."""
    try:
        d = float(dial)
    except (TypeError, ValueError) as e:
        raise DialError(f"invalid dial {dial!r}: use a number in [0, 1] (0 = cheapest acceptable, 1 = best quality)") from e
    if not (0.0 <= d <= 1.0) or math.isnan(d):
        raise DialError(f"invalid dial {dial!r}: use a number in [0, 1] (0 = cheapest acceptable, 1 = best quality)")
    return d


def lam(dial: float, config: DialConfig = DialConfig()) -> float:
    """lambda(dial): +inf at 0, 0 at 1, strictly decreasing (log-uniform) in between."""
    d = validate_dial(dial)
    if d == 0.0:
        return math.inf
    if d == 1.0:
        return 0.0
    return config.lam_max * (config.lam_min / config.lam_max) ** d


_MODEL_RE = re.compile(r"^thinkroute-dial-([0-9]*\.?[0-9]+)$")


def parse_dial_model(model: str) -> float | None:
    """`thinkroute-dial-0.3` -> 0.3; any other model name -> None; out-of-range -> DialError."""
    m = _MODEL_RE.match(model)
    return validate_dial(m.group(1)) if m else None
