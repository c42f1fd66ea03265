"""The live planning policy: which plan answers this query, decided per request by the dial.

    query -> drafter HiddenState (worker RPC, cached by query hash) -> per-plan predictions
          -> Policy.choose(predictions, dial, max_cost, max_latency_ms) -> Plan (+ why, in the trace)

Predictions come from a trained policy artifact (`policy.artifact`: a `Policy.save` directory whose
probe reads the drafter's hidden states, e.g. trained from `thinkroute route-eval`-style outcome logs
on `WorkerHiddenStates` features) when one is configured. Without an artifact they come from the
configured per-plan priors (`policy.priors`: P(correct) and tokens per model) and the prices per model:
the embedded default ships such priors, because no outcome log of the embedded models exists; they
are stated as priors in the trace, not as measurements. Costs are always tokens x price per model.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from router.errors import InvalidRoute
from router.policy.dial import DialConfig
from router.policy.policy import NoFeasiblePlan, Policy, PolicyConfig, Prediction, choose
from router.strategies import get_strategy
from router.types import RouteQuery
from workers.types import PromptInput

if TYPE_CHECKING:
    from router.config import Config
    from router.planner import Plan, Planner


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


class LivePolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    candidates: dict[str, CandidatePlan]
    """Plans the policy chooses among, by name."""
    prices: dict[str, float] = Field(default_factory=dict)
    """USD per million tokens (prompt and generated) per model name."""
    priors: dict[str, PlanPrior] = Field(default_factory=dict)
    """Per-plan priors used when no artifact is configured."""
    artifact: str | None = None
    """Directory of a saved `Policy` (probe on the drafter's hidden states); None = priors."""
    drafter_role: str = "small"
    """Role (router.roles) of the model whose hidden states the probe reads."""
    layers: list[int] = Field(default_factory=lambda: [-1])
    """Hidden-state layers the probe reads (the artifact's feature spec must match)."""
    dial: dict[str, float] = Field(default_factory=dict)
    """lambda(dial) mapping overrides (lam_max, lam_min, cost_scale), see router/policy/dial.py."""
    cache_size: int = Field(4096, ge=0)
    """Queries whose hidden states are kept (by sha256 of the text)."""


class PlanningPolicy:
    """Called by `Planner.plan` when the request fixes no strategy/model."""

    def __init__(self, config: "Config") -> None:
        self.config = config
        self.spec = config.policy if isinstance(config.policy, LivePolicyConfig) else LivePolicyConfig.model_validate(config.policy)
        for name, cand in self.spec.candidates.items():
            get_strategy(cand.strategy)  # unknown strategy: fail at start, naming it
            if cand.model and cand.model not in config.models:
                raise InvalidRoute(f"policy.candidates.{name}.model {cand.model!r} is not one of {sorted(config.models)}")
        self.drafter = config.router.roles.get(self.spec.drafter_role, config.router.default_model)
        self.policy: Policy | None = Policy.load(self.spec.artifact, model_id=self.drafter) if self.spec.artifact else None
        if self.policy is None:
            missing = [n for n in self.spec.candidates if n not in self.spec.priors]
            if missing:
                raise InvalidRoute(f"policy: no artifact and no priors for candidates {missing}")
        # Priors only: the same decision rule as a trained policy, without a probe.
        self._prior_config = PolicyConfig(dial=DialConfig(**self.spec.dial))
        self._features: OrderedDict[str, np.ndarray] = OrderedDict()

    def _models_of(self, cand: CandidatePlan) -> dict[str, str]:
        cls = get_strategy(cand.strategy)
        if cls.roles == ("model",):
            return {"model": cand.model or self.config.router.default_model}
        return {r: self.config.router.roles[r] for r in cls.roles}

    def _prior_predictions(self, prompt_tokens: int) -> dict[str, Prediction]:
        out = {}
        for name, prior in self.spec.priors.items():
            if name not in self.spec.candidates:
                continue
            models = self._models_of(self.spec.candidates[name])
            cost = sum(self.spec.prices.get(m, 0.0) * (prompt_tokens + prior.tokens.get(m, 0.0)) for m in set(models.values()))
            tokens = sum(prior.tokens.values())
            out[name] = Prediction(p_correct=prior.p_correct, cost=cost / 1e6, latency_ms=200.0 + 60.0 * tokens, tokens=tokens)
        return out

    async def features(self, pool, text: str, deadline: float) -> tuple[np.ndarray, dict]:
        """The drafter's hidden state for `text` (cached by sha256), and the call record."""
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key], {"cached": True}
        states, record = await pool.hidden_states(self.drafter, [PromptInput(text=text)], self.spec.layers,
                                                  deadline=deadline)
        vec = states[0].reshape(-1)
        if self.spec.cache_size:
            self._features[key] = vec
            while len(self._features) > self.spec.cache_size:
                self._features.popitem(last=False)
        return vec, {"cached": False, "latency_ms": record.latency_ms, "replica": record.replica}

    async def plan(self, query: RouteQuery, dial: float, planner: "Planner", pool=None) -> "Plan":
        from router.planner import Plan

        t0 = time.perf_counter()
        text = query.rendered_text()  # the whole conversation: system prompt, history, tool results
        prompt_tokens = max(1, len(text) // 4)
        probe_info: dict[str, Any] = {"source": "priors (configured, not measured)"}
        if self.policy is not None:
            if pool is None:
                raise RuntimeError("the probe policy needs the worker pool for hidden states")
            feats, info = await self.features(pool, text, time.monotonic() + 30.0)
            predictions = self.policy.predict(feats, prompt_tokens)
            probe_info = {"source": f"probe artifact {self.spec.artifact}", "drafter": self.drafter, **info}
        else:
            predictions = self._prior_predictions(prompt_tokens)
        # A tool-calling / structured-output turn: only plans that honour the constraint may answer it.
        from router.planner import CONSTRAINED_STRATEGIES, constrained_turn

        why = constrained_turn(query)
        excluded = {n: f"{why}: strategy {self.spec.candidates[n].strategy!r} cannot honour it"
                    for n in predictions if self.spec.candidates[n].strategy not in CONSTRAINED_STRATEGIES}
        predictions = {n: p for n, p in predictions.items() if n not in excluded}
        if not predictions:
            raise InvalidRoute(f"{why}: no policy candidate can run it (candidates {sorted(excluded)} all use "
                               f"strategies other than {sorted(CONSTRAINED_STRATEGIES)}); name a model instead")
        try:
            limits = dict(max_cost=query.max_cost or None, max_latency_ms=query.max_latency_ms or None)
            if self.policy is not None:
                decision = self.policy.choose(predictions, dial, **limits)
            else:
                decision = choose(predictions, dial, self._prior_config, np.random.default_rng(0), explore=False, **limits)
        except NoFeasiblePlan as e:
            raise InvalidRoute(str(e)) from e
        chosen = self.spec.candidates[decision.plan]
        cls = get_strategy(chosen.strategy)
        options = cls.parse_options(self.config.router.strategies.get(chosen.strategy), chosen.options,
                                    request=query.options)
        candidates = {
            "ranked": [{"plan": c.plan, "p_correct": c.p_correct, "cost": c.cost, "latency_ms": c.latency_ms,
                        "utility": c.utility} for c in decision.ranked],
            "rejected": [{"plan": c.plan, "reason": c.reason} for c in decision.rejected],
            "lambda": decision.lam,
            "predictions": probe_info,
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        }
        if excluded:
            candidates["excluded"] = excluded
        winner = decision.ranked[0]
        reason = f"policy: {decision.plan} has the highest utility at dial {dial:.2f} ({winner.reason})"
        if excluded:
            reason += f"; {why}: only {sorted(predictions)} can run it"
        return Plan(strategy=cls(options), models=self._models_of(chosen), reason=reason, dial=dial,
                    candidates=candidates)


def build_planning_policy(config: "Config") -> PlanningPolicy:
    return PlanningPolicy(config)
