"""The Planner: turns a RouteQuery into a Plan (which strategy, which model per role, and why).

Order of precedence: a strategy/model fixed by the request; else the policy (probes + dial),
when configured; else the config's default strategy. Options are validated here, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.config import Config
from router.errors import InvalidRoute, NotFound
from router.strategies import get_strategy
from router.strategies.base import Strategy
from router.types import RouteQuery


@dataclass
class Plan:
    strategy: Strategy
    models: dict[str, str]
    reason: str
    dial: float
    candidates: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy.name, "models": dict(self.models), "reason": self.reason,
                "dial": self.dial, "candidates": self.candidates,
                "options": self.strategy.options.model_dump()}


class Planner:
    def __init__(self, config: Config, dials: "DialStore", policy=None) -> None:
        self.config = config
        self.dials = dials
        self.policy = policy  # optional: router.policy planning (tracker issue 4)

    def _models_for(self, strategy_cls: type[Strategy], query: RouteQuery) -> dict[str, str]:
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
        if query.dial is not None:
            if not 0.0 <= query.dial <= 1.0:
                raise InvalidRoute(f"dial must be in [0, 1] (0 = cheapest acceptable, 1 = best quality); got {query.dial}")
            return query.dial
        return self.dials.get(query.tenant)

    async def plan(self, query: RouteQuery, pool=None) -> Plan:
        dial = self.resolve_dial(query)
        if query.strategy or query.model:
            name = query.strategy or "direct"
            reason = "fixed by the request" + (f" (strategy {name})" if query.strategy else f" (model {query.model})")
        elif self.policy is not None:
            return await self.policy.plan(query, dial, self, pool)
        else:
            name = self.config.router.default_strategy
            reason = "config default (router.default_strategy); no policy configured"
        cls = get_strategy(name)
        options = cls.parse_options(self.config.router.strategies.get(name), query.options)
        return Plan(strategy=cls(options), models=self._models_for(cls, query), reason=reason, dial=dial)


class DialStore:
    """The default dial, global and per tenant; changed at runtime by the admin RPC."""

    def __init__(self, default: float, tenants: dict[str, float] | None = None) -> None:
        self.default = default
        self.tenants = dict(tenants or {})

    def get(self, tenant: str = "") -> float:
        return self.tenants.get(tenant, self.default) if tenant else self.default

    def set(self, value: float, tenant: str = "") -> float:
        if not 0.0 <= value <= 1.0:
            raise InvalidRoute(f"dial must be in [0, 1]; got {value}")
        if tenant:
            self.tenants[tenant] = value
        else:
            self.default = value
        return value
