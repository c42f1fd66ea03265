"""workers/metrics.py: vLLM-named Prometheus metrics and the windowed numbers `Load` reports (injected clock)."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import WorkerMetrics, serve_metrics


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def families(metrics: WorkerMetrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict, name: str, sample_name: str | None = None, **labels) -> float:
    for s in fams[name].samples:
        if s.name == (sample_name or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(sample_name or name)


def test_vllm_names_gauges_read_live_values():
    state = {"running": 3, "waiting": 5, "kv": 0.25}
    m = WorkerMetrics("smollm2-135m", lambda: state["running"], lambda: state["waiting"], lambda: state["kv"])
    fams = families(m)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds", "vllm:prompt_tokens",
                 "vllm:generation_tokens", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
        assert name in fams, name
    assert sample(fams, "vllm:num_requests_running", model_name="smollm2-135m") == 3
    assert sample(fams, "vllm:num_requests_waiting") == 5
    assert sample(fams, "vllm:kv_cache_usage_perc") == 0.25
    state.update(running=0, kv=None)  # a backend without KV stats reads 0
    fams = families(m)
    assert sample(fams, "vllm:num_requests_running") == 0 and sample(fams, "vllm:kv_cache_usage_perc") == 0


def test_request_timings_histograms_counters_and_window():
    clock = Clock()
    m = WorkerMetrics("m", lambda: 0, lambda: 0, clock=clock, window_s=60.0)
    for ttft, gaps in ((0.1, [0.02, 0.02]), (0.3, [0.04])):
        rt = m.request()
        clock.t += ttft
        rt.tokens(1)
        for g in gaps:
            clock.t += g
            rt.tokens(1)
        rt.finish(prompt_tokens=100, generated_tokens=1 + len(gaps), cached_prompt_tokens=40, finished_reason="stop")
    fams = families(m)
    assert sample(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 2
    assert sample(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_sum") == pytest.approx(0.4)
    assert sample(fams, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == 3
    assert sample(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == 200
    assert sample(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 5
    assert sample(fams, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == 80
    assert sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="stop") == 2
    w = m.window()
    assert w.prompt_tokens_per_s == pytest.approx(200 / 60) and w.generated_tokens_per_s == pytest.approx(5 / 60)
    assert w.prefix_cache_hit_rate == pytest.approx(0.4)
    assert 100 <= w.ttft_p50_ms <= 300 and w.ttft_p95_ms == pytest.approx(290, rel=0.01)
    assert w.itl_p50_ms == pytest.approx(20) and w.itl_p95_ms == pytest.approx(38, rel=0.01)
    assert w.kv_cache_usage is None
    clock.t += 61  # the window forgets; the counters do not
    assert m.window().prompt_tokens_per_s == 0 and m.window().ttft_p95_ms == 0
    assert sample(families(m), "vllm:prompt_tokens", "vllm:prompt_tokens_total") == 200


def test_a_chunk_of_several_tokens_spreads_its_gap():
    clock = Clock()
    m = WorkerMetrics("m", lambda: 0, lambda: 0, clock=clock)
    rt = m.request()
    clock.t += 0.5
    rt.tokens(3)  # the first chunk (3 tokens at once): TTFT 0.5, no gap
    clock.t += 0.3
    rt.tokens(3)  # 3 tokens in 0.3 s: 0.1 s each
    assert m.window().itl_p95_ms == pytest.approx(100, rel=0.01)
    rt.tokens(0)  # chunks without tokens (text only, final) change nothing


def test_metrics_endpoint_serves_prometheus_text():
    m = WorkerMetrics("m", lambda: 2, lambda: 1)
    server, port = serve_metrics(m, "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["vllm:num_requests_waiting"].samples[0].value == 1
