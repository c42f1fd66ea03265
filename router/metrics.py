"""The router's own signals: Prometheus metrics (`thinkroute_*`, served at GET /metrics of the HTTP ingress) and
the plan mix that coupled scaling reads (router/autoscale.py).

    RouterCore._route: planned  -> RouterSignals.planned(plan, plan_ms)       (at planning time)
                       answered -> RouterSignals.finished(plan, trace dict)   (tokens, cost, latency)

| metric | kind | labels | meaning |
|---|---|---|---|
| `thinkroute_plans_total` | counter | plan, strategy | plans chosen (`plan` = policy candidate, or `strategy:models` for fixed plans) |
| `thinkroute_planning_seconds` | histogram | | time to choose the plan (policy, probe call included) |
| `thinkroute_request_dial` | histogram | | the dial each planned request ran with |
| `thinkroute_dial` | gauge | | the global default dial now |
| `thinkroute_requests_total` | counter | plan | requests answered |
| `thinkroute_request_seconds` | histogram | | router-side latency of answered requests |
| `thinkroute_cost_usd_total` / `thinkroute_request_cost_usd` | counter / histogram | plan / - | tokens x `policy.prices` of answered requests |
| `thinkroute_model_tokens_total` | counter | model, kind | prompt / generated tokens of answered requests per model pool |
| `thinkroute_plan_rate` | gauge | plan | plans per second over the plan-mix window |
| `thinkroute_pool_plans_per_second` | gauge | pool | plans per second that call the pool |
| `thinkroute_pool_demand_tokens_per_second` | gauge | pool | generated tokens/s those plans predict for the pool |

Each router replica has its own registry (one per `RouterCore`); a scrape through Ray Serve's HTTP proxy
reaches one replica, so with several router replicas scrape each (or sum what the Cluster service reports).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from router.autoscale import PlanMix

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_COST = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
_DIAL = tuple(round(0.1 * i, 1) for i in range(1, 11))


def plan_key(plan_name: str, strategy: str, models: Mapping[str, str]) -> str:
    """The plan's name in the mix: the policy candidate's name, else `strategy:model+model` (a fixed plan)."""
    return plan_name or f"{strategy}:{'+'.join(sorted(set(models.values())))}"


def request_cost(usage: list[dict[str, Any]], prices: Mapping[str, Any]) -> float:
    """USD of one answered request: per model, prompt x in-price + generated x out-price (per million tokens).
    A price is one number (both) or {in, out}."""
    from router.policy.costs import token_cost  # the one cost function: numbers, {in, out} dicts, ModelPrice

    return sum(token_cost(prices.get(u.get("model", "")), u.get("prompt_tokens", 0), u.get("generated_tokens", 0))
               for u in usage)


class _MixCollector:
    """Reads the plan mix at scrape time (no background task)."""

    def __init__(self, mix: PlanMix) -> None:
        self.mix = mix

    def collect(self):
        rate = GaugeMetricFamily("thinkroute_plan_rate", "Plans chosen per second (plan-mix window).", labels=["plan"])
        for plan, r in sorted(self.mix.plan_rate().items()):
            rate.add_metric([plan], r)
        pools = GaugeMetricFamily("thinkroute_pool_plans_per_second", "Plans per second that call the pool.",
                                  labels=["pool"])
        for pool, r in sorted(self.mix.pool_plan_rate().items()):
            pools.add_metric([pool], r)
        demand = GaugeMetricFamily("thinkroute_pool_demand_tokens_per_second",
                                   "Generated tokens per second the chosen plans predict for the pool.", labels=["pool"])
        for pool, d in sorted(self.mix.demand().items()):
            demand.add_metric([pool], d)
        return [rate, pools, demand]

    def describe(self):
        return []


class RouterSignals:
    """One router replica's metrics and plan mix. Called on the replica's event loop; scraped from it too."""

    def __init__(self, priors: Mapping[str, Mapping[str, float]] | None = None,
                 prices: Mapping[str, Any] | None = None, dial: Callable[[], float] = lambda: 0.0, *,
                 mix_window_s: float = 20.0, default_tokens: float = 256.0) -> None:
        self.prices = dict(prices or {})
        self.mix = PlanMix(priors, window_s=mix_window_s, default_tokens=default_tokens)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.plans = Counter("thinkroute_plans", "Plans chosen.", ["plan", "strategy"], registry=r)
        self.planning = Histogram("thinkroute_planning_seconds", "Time to choose the plan.", buckets=_SECONDS, registry=r)
        self.request_dial = Histogram("thinkroute_request_dial", "Dial of each planned request.", buckets=_DIAL,
                                      registry=r)
        Gauge("thinkroute_dial", "The global default dial.", registry=r).set_function(lambda: float(dial()))
        self.requests = Counter("thinkroute_requests", "Requests answered.", ["plan"], registry=r)
        self.latency = Histogram("thinkroute_request_seconds", "Router-side latency of answered requests.",
                                 buckets=_REQUEST_SECONDS, registry=r)
        self.cost = Counter("thinkroute_cost_usd", "Cost of answered requests (tokens x policy.prices).", ["plan"],
                            registry=r)
        self.request_cost = Histogram("thinkroute_request_cost_usd", "Cost of one answered request.", buckets=_COST,
                                      registry=r)
        self.tokens = Counter("thinkroute_model_tokens", "Tokens of answered requests per model pool.",
                              ["model", "kind"], registry=r)
        r.register(_MixCollector(self.mix))

    @classmethod
    def from_config(cls, config, dial: Callable[[], float]) -> "RouterSignals":
        """Priors and prices from `config.policy` (none: every plan starts at router.max_tokens per pool)."""
        policy = getattr(config, "policy", None)
        priors = {name: dict(p.tokens) for name, p in policy.priors.items()} if policy is not None else {}
        prices = dict(policy.prices) if policy is not None else {}
        auto = getattr(config, "autoscale", None)
        window = getattr(auto, "plan_mix_window_s", 20.0) if auto is not None else 20.0
        return cls(priors, prices, dial, mix_window_s=window, default_tokens=float(config.router.max_tokens))

    def planned(self, plan_name: str, strategy: str, models: Mapping[str, str], dial: float, plan_s: float) -> str:
        """A plan was chosen now (before any model call). Returns its key in the mix."""
        key = plan_key(plan_name, strategy, models)
        self.mix.observe_plan(key, models.values())
        self.plans.labels(key, strategy).inc()
        self.planning.observe(max(0.0, plan_s))
        self.request_dial.observe(dial)
        return key

    def finished(self, key: str, trace: Mapping[str, Any]) -> None:
        """The request was answered; `trace` is its Trace.to_dict()."""
        usage = trace.get("usage", [])
        self.mix.observe_usage(key, {u["model"]: u.get("generated_tokens", 0) for u in usage})
        self.requests.labels(key).inc()
        self.latency.observe(trace.get("stage_ms", {}).get("total", 0.0) / 1e3)
        cost = request_cost(usage, self.prices)
        self.cost.labels(key).inc(cost)
        self.request_cost.observe(cost)
        for u in usage:
            self.tokens.labels(u["model"], "prompt").inc(u.get("prompt_tokens", 0))
            self.tokens.labels(u["model"], "generated").inc(u.get("generated_tokens", 0))

    def exposition(self) -> bytes:
        """The Prometheus text format of this replica's metrics."""
        return generate_latest(self.registry)
