"""Routing policy: per-plan predictions + a cost/quality dial -> ranked plans (no Ray here).

Public API (see docs/routing.md):
    Policy.fit(...), Policy.load(path, model_id=...), policy.predict(features, prompt_tokens, task)
    policy.choose(predictions, dial, max_cost=None, max_latency_ms=None) -> Decision
    policy.update(features, plan, correct, cost, latency_ms, task, prompt_tokens); policy.save(path)
"""
from router.policy.costs import SystemPrice
from router.policy.dial import DialConfig, DialError, lam, parse_dial_model, validate_dial
from router.policy.policy import Candidate, Decision, NoFeasiblePlan, Policy, PolicyConfig, Prediction, RoutingError

__all__ = ["SystemPrice", "DialConfig", "DialError", "lam", "parse_dial_model", "validate_dial", "Candidate", "Decision",
           "NoFeasiblePlan", "Policy", "PolicyConfig", "Prediction", "RoutingError"]
