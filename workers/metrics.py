"""A worker's autoscaling signals: Prometheus `/metrics` with vLLM's names, and the same numbers windowed for `Load`.

    WorkerServicer.Generate -> metrics.request() -> RequestTimer.tokens(n) per chunk -> .finish(final)
    Prometheus scrape      -> WorkerMetrics.registry (served by `serve_metrics(host, port)`)
    Load RPC               -> WorkerMetrics.window()  (the last `window_s` seconds: rates and p50/p95)

Names follow vLLM's own exporter where a counterpart exists, so tools written for vLLM (the Gateway API
Inference Extension's endpoint picker reads the first three) read a thinkroute worker unchanged:

| metric | kind | meaning |
|---|---|---|
| `vllm:num_requests_waiting` | gauge | requests admitted but not yet running (the worker's bounded queue) |
| `vllm:num_requests_running` | gauge | requests running in the engine |
| `vllm:kv_cache_usage_perc` | gauge | fraction [0, 1] of the engine's KV cache in use (vLLM backend; 0 elsewhere) |
| `vllm:time_to_first_token_seconds` | histogram | request arrival at the worker -> first generated token |
| `vllm:inter_token_latency_seconds` | histogram | gap between generated tokens (a chunk's gap over its tokens) |
| `vllm:e2e_request_latency_seconds` | histogram | request arrival -> last token |
| `vllm:prompt_tokens_total` / `vllm:generation_tokens_total` | counter | tokens of finished Generate calls |
| `vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total` | counter | prompt tokens looked up / found cached |
| `vllm:request_success_total` | counter | finished Generate calls by `finished_reason` |

Every metric carries the label `model_name` (the served model, as vLLM's do). Hit rate = hits / queries.
The registry is this object's own (not prometheus_client's global one, where vLLM's engine registers its
own exporter). All methods run on the server's event loop except the scrape (the exporter's thread reads
gauges through callbacks and counters atomically).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for vLLM keep their resolution.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


@dataclass(frozen=True)
class Window:
    """What `Load` reports: rates and latency percentiles over the last `window_s` seconds (0 when empty)."""

    prompt_tokens_per_s: float = 0.0
    generated_tokens_per_s: float = 0.0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    itl_p50_ms: float = 0.0
    itl_p95_ms: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    kv_cache_usage: float | None = None


class WorkerMetrics:
    """One worker's metrics. `running`/`waiting`/`kv_usage` are read when scraped (callables, no polling)."""

    def __init__(self, model_name: str, running: Callable[[], int], waiting: Callable[[], int],
                 kv_usage: Callable[[], float | None] = lambda: None, *, window_s: float = 60.0,
                 max_samples: int = 8192, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._kv_usage = kv_usage
        self.registry = CollectorRegistry(auto_describe=True)
        lab = {"labelnames": ["model_name"], "registry": self.registry}
        m = model_name
        Gauge("vllm:num_requests_running", "Requests running in the engine.", **lab).labels(m).set_function(
            lambda: float(running()))
        Gauge("vllm:num_requests_waiting", "Requests admitted by the worker and waiting to run.", **lab).labels(
            m).set_function(lambda: float(waiting()))
        Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100 percent (0 when the backend reports none).",
              **lab).labels(m).set_function(lambda: float(self._kv_usage() or 0.0))
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token (arrival at the worker).",
                              buckets=TTFT_BUCKETS, **lab).labels(m)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", buckets=ITL_BUCKETS,
                             **lab).labels(m)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency at the worker (arrival to last token).",
                             buckets=E2E_BUCKETS, **lab).labels(m)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of finished requests.", **lab).labels(m)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens of finished requests.",
                                         **lab).labels(m)
        self.prefix_queries = Counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                      **lab).labels(m)
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", **lab).labels(m)
        self._success = Counter("vllm:request_success", "Finished requests by reason.",
                                labelnames=["model_name", "finished_reason"], registry=self.registry)
        self._model = m
        # (time, prompt tokens, generated tokens, cached tokens, ttft s) per finished request; (time, s) per ITL sample.
        self._done: deque[tuple[float, int, int, int, float]] = deque(maxlen=max_samples)
        self._itls: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def request(self) -> "RequestTimer":
        """Call when a Generate request arrives (before it waits for a slot)."""
        return RequestTimer(self)

    def window(self) -> Window:
        """Rates and p50/p95 over the last `window_s` seconds (what `Load` reports)."""
        now = self.clock()
        done = [d for d in self._done if now - d[0] <= self.window_s]
        itls = np.array([s for t, s in self._itls if now - t <= self.window_s])
        ttfts = np.array([d[4] for d in done if d[4] >= 0])
        prompt = sum(d[1] for d in done)
        cached = sum(d[3] for d in done)

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) * 1e3 if a.size else 0.0

        return Window(
            prompt_tokens_per_s=prompt / self.window_s, generated_tokens_per_s=sum(d[2] for d in done) / self.window_s,
            ttft_p50_ms=pct(ttfts, 50), ttft_p95_ms=pct(ttfts, 95), itl_p50_ms=pct(itls, 50), itl_p95_ms=pct(itls, 95),
            prefix_cache_hit_rate=cached / prompt if prompt else 0.0, kv_cache_usage=self._kv_usage(),
        )

    def _finished(self, rt: "RequestTimer", prompt_tokens: int, generated: int, cached: int, reason: str) -> None:
        now = self.clock()
        self.e2e.observe(now - rt.start)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generated)
        self.prefix_queries.inc(prompt_tokens)
        self.prefix_hits.inc(min(cached, prompt_tokens))
        self._success.labels(self._model, reason or "unknown").inc()
        self._done.append((now, prompt_tokens, generated, cached, rt.ttft_s))


class RequestTimer:
    """One Generate request's timings; feed it the chunks as they are sent."""

    __slots__ = ("metrics", "start", "last", "ttft_s")

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = metrics.clock()
        self.ttft_s = -1.0

    def tokens(self, n: int) -> None:
        """A chunk carrying `n` generated tokens was produced now."""
        if n <= 0:
            return
        now = self.metrics.clock()
        if self.ttft_s < 0:  # the first chunk: its tokens have no gap before them worth measuring
            self.ttft_s = now - self.start
            self.metrics.ttft.observe(self.ttft_s)
        else:  # one observation per chunk: its gap spread over its tokens
            gap = (now - self.last) / n
            self.metrics.itl.observe(gap)
            self.metrics._itls.append((now, gap))
        self.last = now

    def finish(self, prompt_tokens: int, generated_tokens: int, cached_prompt_tokens: int, finished_reason: str) -> None:
        """The request ended with its final message (not called for failed or cancelled requests)."""
        self.metrics._finished(self, prompt_tokens, generated_tokens, cached_prompt_tokens, finished_reason)


def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> tuple[object, int]:
    """Serve `GET /metrics` (Prometheus text format) on host:port from a daemon thread; port 0 picks a free
    one. Returns (the server, to `shutdown()`, and the bound port). OSError when the port is taken."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, int(server.server_port)
