"""Item: plan schema without import cycles, one error hierarchy, request knobs of other strategies, and falling
back down the ranked plans when a pool is down (pure logic: the embedded config, fake pools, no workers)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from router import errors
from router.config import load_config
from router.errors import InvalidRoute, NoReplica
from router.planner import DialStore, Planner
from router.policy.planning import PlanningPolicy
from router.trace import ModelCallRecord
from router.types import Completion, ModelInfo, RouteQuery


def test_config_imports_the_schema_without_the_runtime_policy_or_planner():
    code = ("import sys, router.config, router.plan_schema; "
            "print(sorted(m for m in ('router.policy.planning', 'router.planner', 'router.policy.policy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    # and each runtime module imports on its own, first (no cycle through the other)
    for mod in ("router.policy.planning", "router.planner", "router.plan_schema"):
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)


def test_old_import_paths_still_work():
    from router.plan_schema import CandidatePlan, LivePolicyConfig, Plan
    from router.planner import Plan as P2
    from router.policy.planning import CandidatePlan as C2, LivePolicyConfig as L2
    assert (P2, C2, L2) == (Plan, CandidatePlan, LivePolicyConfig)


def test_policy_errors_are_router_errors_with_client_statuses():
    from router.policy import DialError, NoFeasiblePlan, RoutingError
    for cls in (RoutingError, NoFeasiblePlan, DialError):
        assert issubclass(cls, errors.RoutingError) and issubclass(cls, ValueError)
        assert cls.http_status == 400 and cls.grpc_code == "INVALID_ARGUMENT"


def test_no_feasible_plan_reaches_an_http_client_as_400_not_500():
    from starlette.testclient import TestClient

    from router.http_api import OpenAIFrontend, build_http_app
    from router.policy import NoFeasiblePlan

    class Core:
        pool = None

        async def route(self, query, emit=None):
            raise NoFeasiblePlan("no plan meets the limits max_cost=1e-12: raise a limit")

    client = TestClient(build_http_app(OpenAIFrontend(Core(), load_config(), {})), client=("127.0.0.1", 5))
    r = client.post("/v1/chat/completions", json={"model": "thinkroute", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 400, r.text
    assert "raise a limit" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides={"policy.artifact": None})  # the priors: planning needs no drafter


def planner(cfg):
    return Planner(cfg, DialStore(cfg.dial.default), PlanningPolicy(cfg))


async def test_knobs_of_another_strategy_are_ignored_not_a_400(cfg):
    pl = planner(cfg)
    # dial 0: the policy picks `direct` on the drafter; `max_steps`-like knobs of specreason must not fail it
    from router.strategies import get_strategy
    knob = next(k for k in get_strategy("specreason").Options.model_fields if k not in get_strategy("direct").Options.model_fields
                and k not in get_strategy("specreason").Options.config_only_knobs())
    default = get_strategy("specreason").Options().model_dump()[knob]
    plan = await pl.plan(RouteQuery(query="What is 2+3?", dial=0.0, options={knob: default}))
    assert plan.strategy.name == "direct"
    assert knob in plan.candidates["ignored_options"]
    assert "specreason" in plan.candidates["ignored_options"][knob]


async def test_a_knob_of_no_candidate_is_refused_naming_it(cfg):
    with pytest.raises(InvalidRoute, match="no_such_knob"):
        await planner(cfg).plan(RouteQuery(query="q?", dial=0.0, options={"no_such_knob": 1}))


class DownPool:
    def __init__(self, down: set[str]) -> None:
        self.down = down

    def has_live_replica(self, model: str) -> bool:
        return model not in self.down


async def test_a_down_pool_makes_the_policy_fall_back_down_the_ranking(cfg):
    pl = planner(cfg)
    best = await pl.plan(RouteQuery(query="q?", dial=1.0), pool=DownPool(set()))
    first = best.candidates["ranked"][0]["plan"]
    down = cfg.policy.candidates[first].model or cfg.router.roles["large"]
    plan = await pl.plan(RouteQuery(query="q?", dial=1.0), pool=DownPool({down}))
    assert plan.name != first and down not in plan.models.values()
    assert plan.candidates["fallback"][0]["plan"] == first
    assert "fell back" in plan.reason and down in plan.reason
    assert plan.to_dict()["plan"] == plan.name


class FakePool:
    """`info` of `down` models raises NoReplica (its replicas went away after planning); generate answers."""

    def __init__(self, down: str) -> None:
        self.down, self.generated = down, []

    def has_live_replica(self, model: str) -> bool:
        return True

    async def info(self, model: str, **kw) -> ModelInfo:
        if model == self.down:
            raise NoReplica(f"no healthy replica of model {model!r} is available")
        return ModelInfo(model, "tok", 2048, True, "fake", "cpu")

    async def generate(self, model, prompt, sampling, *, deadline, on_delta=None):
        self.generated.append(model)
        rec = ModelCallRecord(model=model, role="", kind="generate", replica="r0", latency_ms=1.0)
        return Completion("5", [1], "stop", 3, 1), rec

    async def close(self):
        pass


async def test_router_core_falls_back_when_the_chosen_pool_fails_and_the_trace_says_so(cfg):
    from router.service import RouterCore

    core = RouterCore(cfg, {m: ["127.0.0.1:1"] for m in cfg.models}, policy=PlanningPolicy(cfg))
    core.planner.policy.spec.candidates  # loaded
    first = (await core.planner.plan(RouteQuery(query="q?", dial=0.0))).name
    model = cfg.policy.candidates[first].model
    core.pool = FakePool(down=model)
    result = await core.route(RouteQuery(query="q?", dial=0.0))
    plan = result.trace["plan"]
    assert plan["plan"] != first and model not in plan["models"].values()
    assert plan["candidates"]["fallback"][0]["plan"] == first and "fell back" in plan["reason"]
    assert core.pool.generated and model not in core.pool.generated


async def test_a_request_fixed_plan_does_not_fall_back(cfg):
    from router.service import RouterCore

    core = RouterCore(cfg, {m: ["127.0.0.1:1"] for m in cfg.models}, policy=PlanningPolicy(cfg))
    core.pool = FakePool(down="smollm2-135m")
    with pytest.raises(NoReplica):
        await core.route(RouteQuery(query="q?", model="smollm2-135m"))


def test_prices_may_be_one_number_or_in_and_out():
    from router.plan_schema import LivePolicyConfig
    from router.policy.costs import in_out, token_cost

    spec = LivePolicyConfig.model_validate({"candidates": {"a": {"strategy": "direct", "model": "m"}},
                                            "prices": {"m": {"in": 10, "out": 30}, "s": 0.5}})
    assert in_out(spec.prices["m"]) == (10.0, 30.0) and in_out(spec.prices["s"]) == (0.5, 0.5)
    assert token_cost(spec.prices["m"], 1000, 100) == pytest.approx((1000 * 10 + 100 * 30) / 1e6)
    again = LivePolicyConfig.model_validate(spec.model_dump(mode="json"))  # the app ships the config as JSON
    assert in_out(again.prices["m"]) == (10.0, 30.0)
    with pytest.raises(ValueError):
        LivePolicyConfig.model_validate({"candidates": {}, "prices": {"m": {"in": -1, "out": 1}}})


def test_usage_cost_uses_in_and_out_prices():
    from router.chat.usage import usage_from_trace
    from router.plan_schema import ModelPrice

    trace = {"usage": [{"model": "m", "prompt_tokens": 1000, "generated_tokens": 100, "calls": 1}]}
    u = usage_from_trace(trace, {"m": ModelPrice(price_in=10, price_out=30)})
    assert u["cost"] == pytest.approx(0.013)
