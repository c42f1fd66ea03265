"""The Planner: turns a RouteQuery into a Plan (which strategy, which model per role, and why).

Order of precedence: a strategy/model fixed by the request; else the policy (probes + dial),
when configured; else the config's default strategy. Options are validated here, once.
"""
from __future__ import annotations

from typing import Any

from router import sessions
from router.config import Config
from router.errors import InvalidRoute, NotFound
from router.plan_schema import CONSTRAINED_STRATEGIES, Plan, constrained_turn  # noqa: F401 - re-exported
from router.strategies import get_strategy
from router.strategies.base import Strategy
from router.types import RouteQuery


def check_constrained(strategy: str, query: RouteQuery) -> None:
    """InvalidRoute when `query` needs a constrained plan and `strategy` is not one."""
    why = constrained_turn(query)
    if why and strategy not in CONSTRAINED_STRATEGIES:
        raise InvalidRoute(f"strategy {strategy!r} cannot run {why}: only {sorted(CONSTRAINED_STRATEGIES)} can; "
                           "name a model (e.g. model=smollm2-135m) or let the policy choose (model=thinkroute)")


class Planner:
    def __init__(self, config: Config, dials: "DialStore", policy=None) -> None:
        self.config = config
        self.dials = dials
        self.policy = policy  # optional: router.policy planning (tracker issue 4)
        self.feedback = None  # optional: router.feedback.FeedbackLoop (RouterCore sets it), read by the policy
        # Session affinity is on when the `session` replica scorer is configured (router/scorers/session.py).
        session_scorer = next((s for s in config.router.scorers if s.name == "session"), None)
        params = session_scorer.params if session_scorer else {}
        self.sessions_on = session_scorer is not None
        self.pins = (sessions.SessionPins(int(params.get("max_sessions", 10_000)), float(params.get("ttl_s", 3600.0)))
                     if self.sessions_on and params.get("pin_plans", True) else None)

    def _models_for(self, strategy_cls: type[Strategy], query: RouteQuery) -> dict[str, str]:
        check_constrained(strategy_cls.name, query)
        if strategy_cls.roles == ("model",):
            model = query.model or self.config.router.default_model
            if model not in self.config.models:
                raise NotFound(f"unknown model {model!r}; this router serves {sorted(self.config.models)}")
            return {"model": model}
        if query.model:
            raise InvalidRoute(f"strategy {strategy_cls.name!r} uses the configured roles "
                               f"{self.config.router.roles}; do not also set `model`")
        missing = [r for r in strategy_cls.roles if r not in self.config.router.roles]
        if missing:
            raise InvalidRoute(f"strategy {strategy_cls.name!r} needs models for roles {missing}: set router.roles")
        return {r: self.config.router.roles[r] for r in strategy_cls.roles}

    def resolve_dial(self, query: RouteQuery) -> float:
        return self.dial_and_target(query)[0]

    def dial_and_target(self, query: RouteQuery) -> tuple[float, dict[str, Any] | None]:
        """The request's dial, and (when it gave a target instead - `quality_target` / `budget_per_1k`, or its
        tenant's `dial_target` - and no dial) how the target was resolved on the policy's calibration table."""
        from router.policy.calibrate import DialTarget, parse_target, resolve

        given = [n for n in ("dial", "quality_target", "budget_per_1k") if getattr(query, n) is not None]
        if len(given) > 1:
            raise InvalidRoute(f"the request sets {given}: set one of dial, quality_target (e.g. 0.95) and budget_per_1k")
        target = None
        if query.quality_target is not None:
            target = DialTarget(quality=query.quality_target)
        elif query.budget_per_1k is not None:
            target = DialTarget(budget_per_1k=query.budget_per_1k)
        elif query.dial is None:
            tenant = self.config.auth.tenants.get(query.tenant) if query.tenant else None
            if tenant is not None and tenant.dial_target:
                target = parse_target(tenant.dial_target)
        if target is None:
            return self._dial(query), None
        table = getattr(self.policy, "calibration", None)
        if table is None:
            raise InvalidRoute(f"target {target} needs a dial calibration and this router has none: run `thinkroute dial "
                               "calibrate --outcomes F --out DIR` and set policy.calibration: DIR (or send a dial)")
        point, why = resolve(table, target)
        return point.dial, {"target": str(target), "dial": point.dial, "expected_accuracy": point.accuracy,
                            "cost_per_1k": point.cost_per_1k, "why": why}

    def _dial(self, query: RouteQuery) -> float:
        if query.dial is not None:
            if not 0.0 <= query.dial <= 1.0:
                raise InvalidRoute(f"dial must be in [0, 1] (0 = cheapest acceptable, 1 = best quality); got {query.dial}")
            return query.dial
        return self.dials.get(query.tenant)

    def _session(self, query: RouteQuery) -> str:
        """The request's session key (explicit, else derived from its first messages), bound for the
        replica scorers of this request's task; "" when session affinity is off."""
        key = (query.session or sessions.default_key(query.conversation())) if self.sessions_on else ""
        sessions.bind(key)
        return key

    def _pinned(self, query: RouteQuery, key: str, dial: float) -> Plan | None:
        """The session's pinned plan for a follow-up turn, when it was made at this dial for a turn of the same
        kind (constrained - tools or response_format - or not: constrained turns need constrained plans)."""
        if self.pins is None or not key or not sessions.follow_up(query.conversation()):
            return None
        pin = self.pins.get(query.tenant, key)
        if pin is None or pin.dial != dial or pin.constrained != bool(constrained_turn(query)):
            return None
        cls = get_strategy(pin.strategy)
        return Plan(strategy=cls(cls.Options(**pin.options)), models=dict(pin.models), dial=dial, session=key,
                    reason=f"session {key}: the plan of its first turn, kept for turn {pin.turns} ({pin.reason})")

    async def plan(self, query: RouteQuery, pool=None) -> Plan:
        fixed = bool(query.strategy or query.model)
        dial, target = (self._dial(query), None) if fixed else self.dial_and_target(query)
        key = self._session(query)
        if query.strategy or query.model:
            name = query.strategy or "direct"
            reason = "fixed by the request" + (f" (strategy {name})" if query.strategy else f" (model {query.model})")
        elif self.policy is not None:
            pinned = self._pinned(query, key, dial)
            if pinned is not None:
                return pinned
            plan = await self.policy.plan(query, dial, self, pool)
            plan.session = key
            if target is not None:
                plan.candidates["dial_target"] = target
                plan.reason += f"; {target['why']}"
            if self.pins is not None and key:
                self.pins.put(query.tenant, key, sessions.Pin(
                    strategy=plan.strategy.name, models=dict(plan.models), options=plan.strategy.options.model_dump(),
                    dial=dial, reason=plan.reason, constrained=bool(constrained_turn(query))))
            return plan
        else:
            name = self.config.router.default_strategy
            reason = "config default (router.default_strategy); no policy configured"
        cls = get_strategy(name)
        options = cls.parse_options(self.config.router.strategies.get(name), request=query.options)
        return Plan(strategy=cls(options), models=self._models_for(cls, query), reason=reason, dial=dial, session=key)


    def fallback(self, plan: Plan, query: RouteQuery, error: Exception) -> Plan | None:
        """The next plan after `plan` failed with an unavailable pool before answering: the policy's next
        ranked plan (its trace says why), or None (a plan fixed by the request, or none left)."""
        if self.policy is None or not plan.name or not hasattr(self.policy, "fallback"):
            return None
        nxt = self.policy.fallback(plan, query, error)
        if nxt is not None:
            nxt.session = plan.session
        return nxt


class DialStore:
    """The default dial, global and per tenant, of one router replica; changed at runtime by the admin RPC.

    Versioned: `set` bumps `version`; `snapshot()` / `apply(snapshot)` carry the state between the
    app's one owner of runtime dial changes (the `DialState` deployment in router/serve_app.py) and
    each replica's copy. `epoch` names the owner's instance: a snapshot from a new owner (restarted
    with the configured dials) replaces the copy whatever its version."""

    def __init__(self, default: float, tenants: dict[str, float] | None = None, epoch: str = "") -> None:
        self.default = default
        self.tenants = dict(tenants or {})
        self.version = 0
        self.epoch = epoch

    def get(self, tenant: str = "") -> float:
        return self.tenants.get(tenant, self.default) if tenant else self.default

    def set(self, value: float, tenant: str = "") -> float:
        if not 0.0 <= value <= 1.0:
            raise InvalidRoute(f"dial must be in [0, 1]; got {value}")
        if tenant:
            self.tenants[tenant] = value
        else:
            self.default = value
        self.version += 1
        return value

    def snapshot(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": self.version, "default": self.default, "tenants": dict(self.tenants)}

    def apply(self, snap: dict[str, Any]) -> bool:
        """Take `snap` when it is newer (or from another owner instance); True when it changed this copy."""
        if snap["epoch"] == self.epoch and snap["version"] <= self.version:
            return False
        self.epoch, self.version = snap["epoch"], snap["version"]
        self.default, self.tenants = float(snap["default"]), dict(snap["tenants"])
        return True
