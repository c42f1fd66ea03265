"""The plan and the live policy's config schema: data only, imported by config, planner and policy alike.

Dependency direction (no cycles):

    router.plan_schema  <-  router.config  <-  router.planner
            ^                                       |
            +---------- router.policy.planning  <---+ (the planner holds a planning policy, by duck type)

This module imports no runtime router module except the `Strategy` base (for `Plan.strategy`'s type)
and `router.types.RouteQuery` (for `constrained_turn`). `router.planner` and `router.policy.planning`
re-export the names they used to define, so old imports keep working.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.strategies.base import Strategy
from router.types import RouteQuery

#: Strategies whose answer is one model call that honours `RouteQuery.constraint` (structured output, forced
#: tool calls) and whose output is the model's own text (so a tool call in it reaches the caller intact).
#: Tool-calling and structured-output turns go only to these; the pair strategies mix two models' text.
CONSTRAINED_STRATEGIES = frozenset({"direct"})


def constrained_turn(query: RouteQuery) -> str:
    """Why this turn needs a plan from CONSTRAINED_STRATEGIES ("" when it does not)."""
    if query.tools:
        return "a tool-calling turn (tools declared)"
    if query.constraint is not None:
        return "a structured-output turn (response_format)"
    return ""


@dataclass
class Plan:
    """What the planner decided for one request: the strategy (with its parsed knobs), the model per role,
    why, at which dial, and the policy's candidates (ranked, rejected, fallbacks) for the trace."""

    strategy: Strategy
    models: dict[str, str]
    reason: str
    dial: float
    candidates: dict[str, Any] = field(default_factory=dict)
    session: str = ""  # the agent session key this plan serves (router/sessions.py); "" = none
    #: The policy's plan name (a `policy.candidates` key) when the policy chose it; "" otherwise.
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"strategy": self.strategy.name, "models": dict(self.models), "reason": self.reason,
               "dial": self.dial, "candidates": self.candidates,
               "options": self.strategy.options.model_dump(), "session": self.session}
        if self.name:
            out["plan"] = self.name
        return out


class CandidatePlan(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    strategy: str
    """Strategy name (direct, specreason, specthink, cothink, hawkeye)."""
    model: str | None = None
    """For `direct`: the model that answers."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Strategy knobs for this candidate."""


class PlanPrior(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    p_correct: float = Field(ge=0, le=1)
    """Prior probability of a correct answer."""
    tokens: dict[str, float] = Field(default_factory=dict)
    """Expected generated tokens per model name."""


class ModelPrice(BaseModel):
    """A model's prices when prompt and generated tokens differ: `{in: X, out: Y}` (USD per million tokens)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)

    price_in: float = Field(alias="in", ge=0)
    """USD per million prompt tokens."""
    price_out: float = Field(alias="out", ge=0)
    """USD per million generated tokens (thinking tokens count as generated)."""


class FeedbackConfig(BaseModel):
    """The decision log and online learning from feedback (router/decision_log.py, router/feedback.py)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Log each policy decision and accept `POST /v1/feedback` / the `Feedback` RPC."""
    store: Literal["redis", "memory"] = "redis"
    """Where decisions and outcomes live: `redis` (the deployment's Redis, `redis.*`: shared by every router
    replica, so feedback to any replica joins) or `memory` (this process only; tests, Redis disabled)."""
    ttl_s: int = Field(86_400, ge=60, le=30 * 86_400)
    """How long a decision can receive feedback; afterwards its id is unknown (404 / NOT_FOUND)."""
    max_decisions: int = Field(100_000, ge=10, le=10_000_000)
    """Decisions kept (oldest dropped first), whatever their age."""
    max_outcomes: int = Field(200_000, ge=10, le=10_000_000)
    """Joined outcomes kept for the online correction and `thinkroute train --from-log`."""
    max_text_chars: int = Field(20_000, ge=0, le=1_000_000)
    """Characters of the request text kept per decision (for training from the log); 0 = no text."""
    dir: str | None = None
    """Also append joined outcomes to `<dir>/outcomes.jsonl` (restored at start when the store has none)."""
    sync_interval_s: float = Field(2.0, ge=0.1, le=3600)
    """How often a replica reads outcomes other replicas received (at most once per interval, on a request)."""
    prior_var: float = Field(0.5, gt=0)
    """Prior variance of the per-(task, plan) logit correction (smaller = more feedback needed to move it)."""


class LivePolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    candidates: dict[str, CandidatePlan]
    """Plans the policy chooses among, by name."""
    prices: dict[str, Annotated[float, Field(ge=0)] | ModelPrice] = Field(default_factory=dict)
    """USD per million tokens per model name: a number (prompt and generated alike) or `{in: X, out: Y}`
    (cost = prompt tokens x in + generated tokens x out; router/policy/costs.py `token_cost`)."""
    priors: dict[str, PlanPrior] = Field(default_factory=dict)
    """Per-plan priors used when no artifact is configured."""
    artifact: str | None = None
    """Directory of a saved `Policy` (probe on the drafter's hidden states); None = priors."""
    drafter_role: str = "small"
    """Role (router.roles) of the model whose hidden states the probe reads."""
    layers: list[int] | None = None
    """Hidden-state layers the probe reads; None = the artifact's feature spec (when set, it must match it)."""
    dial: dict[str, float] = Field(default_factory=dict)
    """lambda(dial) mapping overrides (lam_max, lam_min, cost_scale), see router/policy/dial.py."""
    cache_size: int = Field(4096, ge=0)
    """Queries whose hidden states are kept (by sha256 of the text)."""
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    """Decision log, feedback and the online per-task correction."""
    calibration: str | None = None
    """Dial calibration table (`thinkroute dial calibrate --out DIR`: DIR or DIR/dial_calibration.json) that
    resolves `quality >= q` / `budget <= $X per 1k requests` targets; None = `<artifact>/dial_calibration.json`
    when the artifact has one, else targets are refused (400) naming this field."""
    probe_timeout_ms: float = Field(10_000.0, gt=0, le=300_000)
    """Longest planning waits for the probe's features (the drafter's Info and HiddenState calls); past it the
    plan comes from the priors (when every candidate has one) or the config default, and the trace says so."""
    probe_budget_share: float = Field(0.5, gt=0, le=1)
    """Of a request's `max_latency_ms`, the share planning may wait for the probe's features (the tighter of
    this and `probe_timeout_ms` applies); a request with max_latency_ms 500 waits at most 250 ms by default."""
