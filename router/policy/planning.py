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

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from router.errors import DeadlineExceeded, InvalidRoute
from router.plan_schema import (  # noqa: F401 - CandidatePlan, PlanPrior, LivePolicyConfig re-exported (old import path)
    CONSTRAINED_STRATEGIES, CandidatePlan, LivePolicyConfig, Plan, PlanPrior, constrained_turn)
from router.policy.costs import token_cost
from router.policy.dial import DialConfig
from router.policy.policy import NoFeasiblePlan, Policy, PolicyConfig, Prediction, choose
from router.policy.reasoning_plans import check_candidate
from router.strategies import get_strategy
from router.types import RouteQuery
from workers.types import PromptInput

if TYPE_CHECKING:
    from router.config import Config
    from router.planner import Planner


class PlanningPolicy:
    """Called by `Planner.plan` when the request fixes no strategy/model."""

    def __init__(self, config: "Config") -> None:
        self.config = config
        self.spec = config.policy if isinstance(config.policy, LivePolicyConfig) else LivePolicyConfig.model_validate(config.policy)
        for name, cand in self.spec.candidates.items():
            get_strategy(cand.strategy)  # unknown strategy: fail at start, naming it
            if cand.model and cand.model not in config.models:
                raise InvalidRoute(f"policy.candidates.{name}.model {cand.model!r} is not one of {sorted(config.models)}")
            check_candidate(config, name, cand)  # knobs (e.g. a reasoning mode's `thinking`) fail at start, not per request
        self.drafter = config.router.roles.get(self.spec.drafter_role, config.router.default_model)
        self.policy: Policy | None = None
        self.request: dict | None = None  # HiddenState arguments of the artifact's feature spec
        self._served_checked = False
        if self.spec.artifact:
            self.policy, self.request = load_servable_artifact(self.spec.artifact, list(self.spec.candidates),
                                                               self.spec.layers, self._expected_model_id())
        # A text-feature artifact (noise / prompt length baselines, router/learn/textfeat.py): no worker call.
        self.text_source = None
        if self.policy is not None and self.request is None:
            from router.learn.textfeat import source_for_spec

            self.text_source = source_for_spec(self.policy.probe.feature_spec)
        if self.policy is None:
            missing = [n for n in self.spec.candidates if n not in self.spec.priors]
            if missing:
                raise InvalidRoute(f"policy: no artifact and no priors for candidates {missing}")
        self.calibration = _load_calibration(self.spec)  # dial targets (router/policy/calibrate.py); None = none
        # Priors only: the same decision rule as a trained policy, without a probe.
        self._prior_config = PolicyConfig(dial=DialConfig(**self.spec.dial))
        self._features: OrderedDict[str, np.ndarray] = OrderedDict()

    def _expected_model_id(self) -> str:
        """What the drafter's workers should report as their model_id (the pool's registry name)."""
        pool = self.config.models.get(self.drafter)
        return (pool.model if pool is not None and pool.model else self.drafter)

    async def check_served(self, pool, deadline: float | None = None) -> None:
        """Refuse the artifact unless the drafter's workers serve the model it was trained on (Info, within
        `deadline`, a time.monotonic() value, when given)."""
        if self.policy is None or self._served_checked or self.request is None:
            return
        served = await (pool.served_model_id(self.drafter) if deadline is None
                        else _with_deadline(pool.served_model_id(self.drafter, deadline=deadline), deadline))
        check_model_identity(self.policy, served, self.drafter)
        self._served_checked = True

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
            cost = 1e6 * sum(token_cost(self.spec.prices.get(m), prompt_tokens, prior.tokens.get(m, 0.0)) for m in set(models.values()))
            tokens = sum(prior.tokens.values())
            out[name] = Prediction(p_correct=prior.p_correct, cost=cost / 1e6, latency_ms=200.0 + 60.0 * tokens, tokens=tokens)
        return out

    async def features(self, pool, text: str, deadline: float) -> tuple[np.ndarray, dict]:
        """The drafter's hidden state for `text` (cached by sha256), and the call record."""
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key], {"cached": True}
        if self.text_source is not None:
            return self.text_source.features([text])[0], {"cached": False, "computed": "in the router (text features)"}
        await self.check_served(pool, deadline)
        rows, served, record = await pool.hidden_features(self.drafter, [PromptInput(text=text)], self.request,
                                                          deadline=deadline)
        check_model_identity(self.policy, served, self.drafter)
        vec = rows[0]
        if self.spec.cache_size:
            self._features[key] = vec
            while len(self._features) > self.spec.cache_size:
                self._features.popitem(last=False)
        return vec, {"cached": False, "latency_ms": record.latency_ms, "replica": record.replica}

    async def plan(self, query: RouteQuery, dial: float, planner: "Planner", pool=None) -> "Plan":
        t0 = time.perf_counter()
        text = query.rendered_text()  # the whole conversation: system prompt, history, tool results
        prompt_tokens = max(1, len(text) // 4)
        probe_info: dict[str, Any] = {"kind": "priors", "source": "priors (configured, not measured)"}
        if self.policy is not None:
            if pool is None:
                raise RuntimeError("the probe policy needs the worker pool for hidden states")
            budget_s, why_budget = self.probe_budget_s(query)
            try:
                feats, info = await _with_deadline(self.features(pool, text, time.monotonic() + budget_s),
                                                   time.monotonic() + budget_s)
            except DeadlineExceeded:
                # The request's deadline comes first: plan without the probe, and say so.
                waited = (time.perf_counter() - t0) * 1e3
                late = (f"the probe's features did not arrive within {budget_s * 1e3:.0f} ms ({why_budget}); "
                        f"waited {waited:.0f} ms")
                if any(n not in self.spec.priors for n in self.spec.candidates):
                    return self._default_plan(query, dial, planner, late, t0)
                predictions = self._prior_predictions(prompt_tokens)
                probe_info = {"kind": "priors", "source": f"priors (configured, not measured): {late}",
                              "probe_timeout": True, "waited_ms": waited}
            else:
                predictions = self.policy.predict(feats, prompt_tokens)
                probe_info = {"kind": "probe", "source": f"probe artifact {self.spec.artifact}", "drafter": self.drafter,
                              "features": self.policy.probe.feature_spec.get("source"), **info}
        else:
            predictions = self._prior_predictions(prompt_tokens)
        # A tool-calling / structured-output turn: only plans that honour the constraint may answer it.
        why = constrained_turn(query)
        excluded = {n: f"{why}: strategy {self.spec.candidates[n].strategy!r} cannot honour it"
                    for n in predictions if self.spec.candidates[n].strategy not in CONSTRAINED_STRATEGIES} if why else {}
        predictions = {n: p for n, p in predictions.items() if n not in excluded}
        if not predictions:
            raise InvalidRoute(f"{why}: no policy candidate can run it (candidates {sorted(excluded)} all use "
                               f"strategies other than {sorted(CONSTRAINED_STRATEGIES)}); name a model instead")
        # Feedback (router/feedback.py): the task's online correction of P(correct), and the base logits to log.
        feedback, logits = getattr(planner, "feedback", None), None
        if feedback is not None:
            await feedback.sync()
            predictions, logits = feedback.adjust(query.task, predictions)
        try:
            limits = dict(max_cost=query.max_cost or None, max_latency_ms=query.max_latency_ms or None)
            if self.policy is not None:
                decision = self.policy.choose(predictions, dial, **limits)
            else:
                decision = choose(predictions, dial, self._prior_config, np.random.default_rng(0), explore=False, **limits)
        except NoFeasiblePlan:
            raise  # an InvalidRoute (router/errors.py): the client relaxes a limit
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
        if logits is not None:
            candidates["logits"] = logits
            candidates["task"] = query.task
        # Fall down the ranking past plans whose pools have no live replica now (the trace says which).
        order = [c.plan for c in decision.ranked]
        skipped = {}
        for name in order:
            down = [m for m in sorted(set(self._models_of(self.spec.candidates[name]).values())) if not _pool_up(pool, m)]
            if not down:
                break
            skipped[name] = f"pool {down[0]!r} has no live replica"
        else:
            name = order[0]  # every pool is down: try the best plan anyway; the pool says NoReplica
            skipped = {}
        if skipped:
            candidates["fallback"] = [{"plan": n, "reason": r} for n, r in skipped.items()]
        winner = next(c for c in decision.ranked if c.plan == name)
        reason = f"policy: {name} has the highest utility at dial {dial:.2f} ({winner.reason})"
        if skipped:
            reason = (f"policy: fell back to {name} (rank {order.index(name) + 1}) because "
                      + "; ".join(f"{n}: {r}" for n, r in skipped.items()) + f" ({winner.reason})")
        if excluded:
            reason += f"; {why}: only {sorted(predictions)} can run it"
        return self.plan_named(name, query, dial, candidates, reason)

    def probe_budget_s(self, query: RouteQuery) -> tuple[float, str]:
        """How long planning may wait for the probe's features (seconds), and why: `policy.probe_timeout_ms`, or
        `policy.probe_budget_share` of the request's `max_latency_ms` when that is tighter."""
        budget, why = self.spec.probe_timeout_ms / 1e3, "policy.probe_timeout_ms"
        if query.max_latency_ms:
            share = self.spec.probe_budget_share * query.max_latency_ms / 1e3
            if share < budget:
                budget, why = share, (f"policy.probe_budget_share {self.spec.probe_budget_share:g} of the request's "
                                      f"max_latency_ms {query.max_latency_ms:g}")
        return budget, why

    def _default_plan(self, query: RouteQuery, dial: float, planner: "Planner", late: str, t0: float) -> Plan:
        """The config's default plan (router.default_strategy), when the probe is late and priors do not cover
        every candidate."""
        name = self.config.router.default_strategy
        cls = get_strategy(name)
        options = cls.parse_options(self.config.router.strategies.get(name), request=query.options)
        candidates = {"predictions": {"kind": "default", "source": f"none: {late}", "probe_timeout": True},
                      "plan_ms": (time.perf_counter() - t0) * 1e3}
        return Plan(strategy=cls(options), models=planner._models_for(cls, query), dial=dial, candidates=candidates,
                    reason=f"config default (router.default_strategy {name!r}): {late}, and policy.priors do not "
                           "cover every candidate")

    def plan_named(self, name: str, query: RouteQuery, dial: float, candidates: dict[str, Any], reason: str) -> Plan:
        """The Plan for candidate `name`. The request's strategy knobs apply to the chosen strategy only: a knob
        that belongs to another candidate's strategy is ignored (listed in the trace under
        `candidates.ignored_options`), a knob of no candidate strategy is refused (InvalidRoute naming them)."""
        chosen = self.spec.candidates[name]
        cls = get_strategy(chosen.strategy)
        own, ignored = self._split_request_options(cls, query.options or {})
        options = cls.parse_options(self.config.router.strategies.get(chosen.strategy), chosen.options, request=own)
        candidates = dict(candidates)
        if ignored:
            candidates["ignored_options"] = ignored
        return Plan(strategy=cls(options), models=self._models_of(chosen), reason=reason, dial=dial,
                    candidates=candidates, name=name)

    def _split_request_options(self, cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        fields = cls.Options.model_fields
        own = {k: v for k, v in options.items() if k in fields}
        other = [k for k in options if k not in fields]
        if not other:
            return own, {}
        known: dict[str, list[str]] = {}
        for cand in self.spec.candidates.values():
            for k in get_strategy(cand.strategy).Options.model_fields:
                known.setdefault(k, []).append(cand.strategy)
        unknown = [k for k in other if k not in known]
        if unknown:
            raise InvalidRoute(f"unknown strategy options {sorted(unknown)}: no policy candidate's strategy has them "
                               f"(valid knobs: {sorted(known)})")
        return own, {k: f"a knob of {sorted(set(known[k]))}, not of the chosen strategy {cls.name!r}" for k in other}

    def fallback(self, plan: Plan, query: RouteQuery, error: Exception) -> Plan | None:
        """The next ranked plan after `plan` failed with `error` (its pool unavailable) before answering anything,
        skipping plans that use the failed plan's models; None when no ranked plan is left."""
        order = [r["plan"] for r in plan.candidates.get("ranked", [])]
        if plan.name not in order:
            return None
        failed = set(plan.models.values())
        tried = [f["plan"] for f in plan.candidates.get("fallback", [])] + [plan.name]
        for name in order[order.index(plan.name) + 1:]:
            if set(self._models_of(self.spec.candidates[name]).values()) & failed:
                continue
            candidates = dict(plan.candidates)
            candidates["fallback"] = [*plan.candidates.get("fallback", []),
                                      {"plan": plan.name, "reason": f"failed before answering: {error}"}]
            reason = (f"policy: fell back to {name} (rank {order.index(name) + 1}) because "
                      f"{', '.join(tried[-1:])} failed: {error}")
            return self.plan_named(name, query, plan.dial, candidates, reason)
        return None


async def _with_deadline(aw, deadline: float):
    """Await `aw` until `deadline` (time.monotonic()); past it, cancel it and raise DeadlineExceeded."""
    try:
        return await asyncio.wait_for(aw, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise DeadlineExceeded("the planning deadline passed") from None


def _load_calibration(spec: LivePolicyConfig):
    """The dial calibration table of `policy.calibration`, else of the artifact directory, else None."""
    from pathlib import Path

    from router.policy.calibrate import TABLE_FILE, CalibrationTable

    if spec.calibration:
        from router.learn.serving import resolve_artifact

        return CalibrationTable.load(resolve_artifact(spec.calibration))  # relative: the cwd, else the repository
    if spec.artifact:
        from router.learn.serving import resolve_artifact

        found = Path(resolve_artifact(spec.artifact)) / TABLE_FILE
        if found.is_file():
            return CalibrationTable.load(found)
    return None


def _pool_up(pool, model: str) -> bool:
    """False when the pool knows `model` and has no replica of it that is not marked down (None pool: up)."""
    if pool is None or not hasattr(pool, "has_live_replica"):
        return True
    return pool.has_live_replica(model)


def check_model_identity(policy: Policy, served_model_id: str, pool_name: str) -> None:
    """Raise InvalidRoute unless the worker serves the model whose hidden states the probe was trained on."""
    if served_model_id != policy.probe.model_id:
        raise InvalidRoute(f"policy.artifact: the probe reads hidden states of model {policy.probe.model_id!r} but the "
                           f"drafter pool {pool_name!r} serves {served_model_id!r}; retrain the artifact on that model or "
                           f"point policy.drafter_role at a pool serving {policy.probe.model_id!r}")


def load_servable_artifact(path: str, plans: list[str], layers: list[int] | None, model_id: str) -> tuple[Policy, dict]:
    """Load a policy artifact and check, before serving, that the live path computes exactly its features:
    the feature spec must be served by one HiddenState call (probes.features.feature_request), its layers
    must match `layers` when configured, its model must be `model_id` (the drafter's registry name; the
    served model id is checked again against the worker's Info) and its plans must be the candidates.
    Raises InvalidRoute naming the difference."""
    from probes.features import feature_request
    from probes.probe import ProbeError
    from router.learn.serving import resolve_artifact
    from router.learn.textfeat import is_text_spec

    path = resolve_artifact(path)  # relative: the cwd, else the repository root
    try:
        policy = Policy.load(path)
    except (ProbeError, OSError, ValueError) as e:
        raise InvalidRoute(f"policy.artifact {path}: {e}") from e
    spec = policy.probe.feature_spec
    if is_text_spec(spec):  # computed by the router itself: no drafter, no HiddenState call
        _check_plans(path, policy, plans)
        return policy, None
    try:
        request = feature_request(spec)
    except ValueError as e:
        raise InvalidRoute(f"policy.artifact {path}: {e}; only hidden-state probes can be served") from e
    if spec.get("model_id") != policy.probe.model_id:
        raise InvalidRoute(f"policy.artifact {path}: feature spec model {spec.get('model_id')!r} differs from the probe's model {policy.probe.model_id!r}")
    if layers is not None and [int(x) for x in layers] != request["layers"]:
        raise InvalidRoute(f"policy.layers {list(layers)} differ from the artifact's feature spec layers {request['layers']}; "
                           "drop policy.layers or retrain the artifact on those layers")
    check_model_identity(policy, model_id, "(configured drafter)")
    _check_plans(path, policy, plans)
    return policy, request


def _check_plans(path: str, policy: Policy, plans: list[str]) -> None:
    if sorted(policy.plans) != sorted(plans):
        missing, extra = sorted(set(plans) - set(policy.plans)), sorted(set(policy.plans) - set(plans))
        raise InvalidRoute(f"policy.artifact {path} predicts plans {policy.plans} but policy.candidates are {plans}"
                           f" (candidates without a prediction: {missing}; artifact plans not candidates: {extra})")


def warm_hidden_states(config: "Config") -> tuple[str, dict] | None:
    """(drafter pool, its EngineConfig fields `hidden_state_warm_layers`/`_uncertainty`) for the probe artifact of
    `config.policy`, so `thinkroute serve` starts the drafter's workers with the probe's layers loaded and run
    once; None without a hidden-state artifact, or when it cannot be read (the router reports that at start)."""
    spec = config.policy
    if spec is None or not spec.artifact:
        return None
    try:
        from probes.features import feature_request
        from router.learn.serving import resolve_artifact

        request = feature_request(Policy.load(resolve_artifact(spec.artifact)).probe.feature_spec)
    except Exception:  # noqa: BLE001 - a text-feature or unreadable artifact: nothing to warm
        return None
    drafter = config.router.roles.get(spec.drafter_role, config.router.default_model)
    return drafter, {"hidden_state_warm_layers": list(request["layers"]),
                     "hidden_state_warm_uncertainty": bool(request["uncertainty"])}


def build_planning_policy(config: "Config") -> PlanningPolicy:
    return PlanningPolicy(config)
