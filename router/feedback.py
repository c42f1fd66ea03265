"""Online learning from feedback: outcomes of earlier decisions move the policy's per-task correction.

    plan time:     predictions -> FeedbackLoop.adjust(task, predictions) -> corrected P(correct) (+ base logits)
    after answer:  FeedbackLoop.record(query, plan, result) -> Decision in the decision log (router/decision_log.py)
    feedback:      FeedbackLoop.feedback(request_id, tenant, score|correct, task?) -> Outcome -> correction refit

The correction is the policy's own Bayesian logistic correction (router/policy/policy.py `fit_correction`, the
math of `Policy.update`): per (task, plan), logit' = z + a + b z with a Gaussian prior on (a, b), fitted on that
task's outcomes of that plan. `z` is the base logit the policy predicted when it chose (stored in the decision),
so feedback needs neither the query's features nor the replica that answered. It applies on top of whatever
predicts (a trained artifact or the configured priors), so it also survives `thinkroute policy reload`.

Outcomes live in the decision log's store (Redis: shared by all replicas) and optionally in
`<policy.feedback.dir>/outcomes.jsonl`; `start()` replays them (a restarted router has the same corrections), and
`sync()` (called on the planning path, at most every `sync_interval_s`) applies outcomes other replicas received.

Call timing: `adjust` is numpy on a few plans (~20 us); `record` is one Redis pipeline after the answer;
`feedback` is two Redis round trips and one 2x2 Newton fit (~1 ms). Single event loop: not thread-safe.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from router.decision_log import Decision, DecisionLog, Outcome, check_request_id, decision_log_from_config
from router.errors import InvalidRoute, NotFound

log = logging.getLogger("thinkroute.feedback")
#: Outcomes kept per (task, plan) for the correction fit (the oldest are dropped).
MAX_HISTORY = 2000
_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(1 - _EPS, max(_EPS, float(p)))
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class TaskCorrections:
    """Per (task, plan): outcome history [(z, y)] and the fitted (mean[2], cov[2,2]) of (a, b)."""

    def __init__(self, prior_var: float = 0.5, max_history: int = MAX_HISTORY) -> None:
        self.prior_var, self.max_history = prior_var, max_history
        self._hist: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self._corr: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, task: str, plan: str, z: float, y: float) -> None:
        from router.policy.policy import fit_correction

        h = self._hist.setdefault((task, plan), [])
        h.append((float(z), float(y)))
        del h[: max(0, len(h) - self.max_history)]
        zs, ys = zip(*h)
        self._corr[(task, plan)] = fit_correction(np.array(zs), np.array(ys), self.prior_var)

    def count(self, task: str, plan: str) -> int:
        return len(self._hist.get((task, plan), ()))

    def corrected(self, task: str, plan: str, z: float) -> tuple[float, float]:
        """(corrected logit, its posterior std) of base logit `z`; (z, 0) without outcomes for (task, plan)."""
        got = self._corr.get((task, plan))
        if got is None:
            return z, 0.0
        mean, cov = got
        phi = np.array([1.0, z])
        return float(z + phi @ mean), float(np.sqrt(phi @ cov @ phi))

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (t, p), h in self._hist.items():
            out.setdefault(t, {})[p] = len(h)
        return out


class FeedbackLoop:
    """One per router replica (RouterCore.feedback). `log` is shared by all replicas (Redis)."""

    def __init__(self, config, decision_log: DecisionLog | None = None, clock=time.monotonic) -> None:
        self.config = config
        self.fb = config.policy.feedback
        self.log = decision_log or decision_log_from_config(config)
        self.corrections = TaskCorrections(self.fb.prior_var)
        self.clock = clock
        self._next_seq = 0          # next store sequence number not yet applied here
        self._own: set[int] = set()  # sequence numbers this replica applied when it received them
        self._last_sync = -math.inf
        self._started = False
        self._lock: asyncio.Lock | None = None

    # ---- start / follow -----------------------------------------------------------------
    async def start(self) -> int:
        """Replay the stored outcomes (the store's, else `<dir>/outcomes.jsonl`); returns how many."""
        self._started = True
        n = await self._pull()
        if n == 0 and self._next_seq == 0 and self.fb.dir:
            path = Path(self.fb.dir) / "outcomes.jsonl"
            if path.is_file():
                for line in path.read_text().splitlines()[-self.fb.max_outcomes:]:
                    try:
                        self._apply(Outcome.from_json(line))
                        n += 1
                    except (ValueError, KeyError, TypeError):
                        continue
        if n:
            log.info("feedback: %d stored outcomes replayed into the per-task corrections", n)
        return n

    async def _pull(self) -> int:
        outcomes, nxt = await self.log.outcomes_since(self._next_seq)
        first = nxt - len(outcomes)
        n = 0
        for i, o in enumerate(outcomes):
            if first + i not in self._own:
                self._apply(o)
                n += 1
        self._own = {s for s in self._own if s >= nxt}
        self._next_seq = nxt
        self._last_sync = self.clock()
        return n

    async def sync(self) -> None:
        """Apply outcomes other replicas received, at most every `sync_interval_s` (store errors: logged)."""
        if not self._started:
            try:
                await self.start()
            except Exception:  # noqa: BLE001 - the router serves without feedback rather than failing
                log.warning("feedback: could not read the stored outcomes; serving without them for now", exc_info=True)
                self._last_sync = self.clock()
                self._started = True
            return
        if self.clock() - self._last_sync < self.fb.sync_interval_s:
            return
        try:
            await self._pull()
        except Exception:  # noqa: BLE001
            self._last_sync = self.clock()
            log.warning("feedback: could not read new outcomes", exc_info=True)

    def _apply(self, o: Outcome) -> None:
        z = o.decision.logits.get(o.decision.plan)
        if z is not None:
            self.corrections.add(o.task, o.decision.plan, float(z), o.y)

    # ---- planning path --------------------------------------------------------------------
    def adjust(self, task: str, predictions: dict) -> tuple[dict, dict[str, float]]:
        """Predictions with the task's corrections applied, and the base logits (to log with the decision).
        `predictions` maps plan -> router.policy.Prediction; the returned dict holds new Prediction objects."""
        logits, out = {}, {}
        for plan, pr in predictions.items():
            z = _logit(pr.p_correct)
            logits[plan] = z
            zc, std = self.corrections.corrected(task or "", plan, z)
            out[plan] = pr if zc == z else replace(pr, p_correct=_sigmoid(zc), logit_std=max(pr.logit_std, std))
        return out, logits

    # ---- after the answer -----------------------------------------------------------------
    async def record(self, query, plan, result, prices: dict[str, Any] | None = None) -> None:
        """Log the decision behind `result` (a policy-chosen plan only). Never raises: a store failure is
        logged and the answer goes out (feedback for it will then be a 404)."""
        if not plan.name or "logits" not in plan.candidates:
            return
        from router.chat.usage import usage_from_trace

        try:
            text = query.rendered_text()
            ranked = {r["plan"]: r for r in plan.candidates.get("ranked", [])}
            d = Decision(
                request_id=query.request_id, plan=plan.name, tenant=query.tenant, task=query.task,
                strategy=plan.strategy.name, models=dict(plan.models),
                features_key=hashlib.sha256(text.encode()).hexdigest(), text=text[: self.fb.max_text_chars],
                logits=dict(plan.candidates["logits"]), p_correct={p: r["p_correct"] for p, r in ranked.items()},
                predicted_cost=float(ranked.get(plan.name, {}).get("cost", 0.0)),
                cost=float(usage_from_trace(result.trace, prices or {})["cost"]),
                latency_ms=float(result.trace.get("stage_ms", {}).get("total", 0.0)), dial=float(plan.dial))
            await self.log.put(d)
        except Exception:  # noqa: BLE001 - logging a decision never fails the request
            log.warning("feedback: could not log the decision of request %s", query.request_id, exc_info=True)

    # ---- feedback -------------------------------------------------------------------------
    async def feedback(self, request_id: Any, tenant: str, score: Any = None, correct: Any = None,
                       task: Any = None) -> dict[str, Any]:
        """Join a verdict to the logged decision and update the correction. Raises InvalidRoute (bad fields),
        NotFound (unknown, expired, or another tenant's request id: the same answer, so ids leak nothing)."""
        rid = _field(check_request_id, request_id)
        y = verdict(score, correct)
        if task is not None and (not isinstance(task, str) or len(task) > 128):
            raise InvalidRoute("task must be a string of at most 128 characters")
        d = await self.log.get(rid)
        if d is None or d.tenant != tenant:
            raise NotFound(f"no routing decision for request_id {rid!r}: unknown, older than policy.feedback.ttl_s "
                           f"({self.fb.ttl_s} s) or not a policy-routed request of this tenant; send the "
                           "`x-request-id` / RouteResponse.request_id of an answer the policy routed")
        t = task if task else d.task
        z = d.logits.get(d.plan, 0.0)
        before = _sigmoid(self.corrections.corrected(t, d.plan, z)[0])
        o = Outcome(d, y, t)
        seq = await self.log.add_outcome(o)
        self._own.add(seq)
        self._apply(o)
        if self.fb.dir:
            path = Path(self.fb.dir)
            path.mkdir(parents=True, exist_ok=True)
            with open(path / "outcomes.jsonl", "a") as f:
                f.write(o.to_json() + "\n")
        after = _sigmoid(self.corrections.corrected(t, d.plan, z)[0])
        return {"request_id": rid, "plan": d.plan, "task": t, "outcomes": self.corrections.count(t, d.plan),
                "p_correct_before": before, "p_correct_after": after}

    async def close(self) -> None:
        await self.log.close()


def _field(check, value):
    try:
        return check(value)
    except ValueError as e:
        raise InvalidRoute(str(e)) from None


def verdict(score: Any = None, correct: Any = None) -> float:
    """y in [0, 1] from exactly one of `score` (a number in [0, 1]) and `correct` (a boolean)."""
    if (score is None) == (correct is None):
        raise InvalidRoute("send exactly one of `score` (a number in [0, 1]) and `correct` (true/false)")
    if correct is not None:
        if not isinstance(correct, bool):
            raise InvalidRoute(f"correct must be true or false; got {correct!r}")
        return 1.0 if correct else 0.0
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        raise InvalidRoute(f"score must be a number in [0, 1]; got {score!r}")
    return float(score)


# ---- the log as a training file -------------------------------------------------------------------
def decision_log_to_outcomes(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Outcome rows (the route-eval / `thinkroute train` format) from joined feedback: one row per request,
    `question` = the logged text, `task`, and under `plans` only the plan that answered it (bandit feedback:
    the other plans were not run): {is_correct (y >= 0.5), score (y), cost, latency_ms}. Requests without a
    logged text are skipped; the latest verdict per request wins."""
    rows: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        d = o.decision
        if not d.text:
            continue
        rows[d.request_id] = {"id": d.request_id, "question": d.text, "task": o.task, "tenant": d.tenant,
                              "plans": {d.plan: {"is_correct": bool(o.y >= 0.5), "score": o.y, "cost": d.cost,
                                                 "latency_ms": d.latency_ms, "predicted_p_correct":
                                                     d.p_correct.get(d.plan)}}}
    return list(rows.values())


async def export_outcomes(config, out: str | Path, decision_log: DecisionLog | None = None) -> int:
    """Write the stored outcomes of `config`'s deployment as a JSONL training file; returns the row count.
    The CLI hook behind `thinkroute feedback export` (and `thinkroute train --from-log`)."""
    store = decision_log or decision_log_from_config(config)
    try:
        outcomes, _ = await store.outcomes_since(0)
    finally:
        await store.close()
    fb = config.policy.feedback
    if not outcomes and fb.dir and (Path(fb.dir) / "outcomes.jsonl").is_file():
        outcomes = [Outcome.from_json(x) for x in (Path(fb.dir) / "outcomes.jsonl").read_text().splitlines() if x]
    rows = decision_log_to_outcomes(outcomes)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return len(rows)
