"""router/metrics.py: thinkroute_* metrics and the plan mix, and GET /metrics on the HTTP app (parsed with
prometheus_client's parser)."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from router.config import load_config
from router.http_api import OpenAIFrontend, build_http_app
from router.metrics import RouterSignals, plan_key, request_cost

TRACE = {"usage": [{"model": "small", "prompt_tokens": 100, "generated_tokens": 40},
                   {"model": "large", "prompt_tokens": 100, "generated_tokens": 10}],
         "stage_ms": {"total": 1500.0}}


def parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_plan_keys_and_costs():
    assert plan_key("reasoner", "direct", {"model": "large"}) == "reasoner"
    assert plan_key("", "specreason", {"small": "s", "large": "l"}) == "specreason:l+s"
    assert request_cost(TRACE["usage"], {"small": 1.0, "large": {"in": 2.0, "out": 10.0}}) == pytest.approx(
        (140 * 1.0 + 100 * 2.0 + 10 * 10.0) / 1e6)


def test_signals_count_plans_cost_dial_and_demand():
    dial = {"v": 0.3}
    sig = RouterSignals({"specreason": {"small": 128, "large": 32}}, {"small": 1.0, "large": 2.0}, lambda: dial["v"])
    key = sig.planned("specreason", "specreason", {"small": "small", "large": "large"}, 0.3, 0.004)
    sig.finished(key, TRACE)
    m = parse(sig.exposition().decode())
    assert m["thinkroute_plans_total"][(("plan", "specreason"), ("strategy", "specreason"))] == 1
    assert m["thinkroute_planning_seconds_count"][()] == 1
    assert m["thinkroute_dial"][()] == 0.3
    assert m["thinkroute_requests_total"][(("plan", "specreason"),)] == 1
    assert m["thinkroute_request_seconds_sum"][()] == pytest.approx(1.5)
    assert m["thinkroute_cost_usd_total"][(("plan", "specreason"),)] == pytest.approx((140 * 1 + 110 * 2) / 1e6)
    assert m["thinkroute_model_tokens_total"][(("kind", "generated"), ("model", "small"))] == 40
    assert m["thinkroute_plan_rate"][(("plan", "specreason"),)] == pytest.approx(1 / 20)
    # the demand the mix predicts after learning from the finished request: 0.8 x 32 + 0.2 x 10 for large
    assert m["thinkroute_pool_demand_tokens_per_second"][(("pool", "large"),)] == pytest.approx((0.8 * 32 + 2) / 20)
    assert m["thinkroute_pool_plans_per_second"][(("pool", "small"),)] == pytest.approx(1 / 20)
    dial["v"] = 0.9
    assert parse(sig.exposition().decode())["thinkroute_dial"][()] == 0.9


def test_signals_from_the_embedded_config_use_its_priors_and_prices():
    config = load_config()
    sig = RouterSignals.from_config(config, lambda: 0.5)
    assert sig.mix.tokens_of("reasoner", "gemma3-270m") == 128
    assert sig.prices["smollm2-135m"] == 0.05


class _Core:
    def __init__(self) -> None:
        self.signals = RouterSignals(dial=lambda: 0.5)


def test_http_app_serves_metrics_without_a_key():
    config = load_config(overrides={"auth.anonymous_access": "off"})
    core = _Core()
    core.signals.planned("", "direct", {"model": "smollm2-135m"}, 0.5, 0.001)
    client = TestClient(build_http_app(OpenAIFrontend(core, config, {})))
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = parse(resp.text)
    assert m["thinkroute_plans_total"][(("plan", "direct:smollm2-135m"), ("strategy", "direct"))] == 1
