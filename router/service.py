"""`RouterCore`: one request's whole life, the same for every ingress (gRPC, OpenAI HTTP).

    ingress -> RouterCore.route(query) -> Planner.plan -> Strategy.run(ctx) -> RouteResult(+trace)

It is plain asyncio (no Ray): the Ray Serve deployment in router/serve_app.py holds one.
Before `route`, each ingress passes the request through `core.admission` (router/admission.py:
credential -> tenant, rate limits, quotas); `validate` applies the request bounds (`limits:`).
"""
from __future__ import annotations

import time
from typing import Awaitable, Callable

from router.admission import Admission, check_caps
from router.answers import extract_final_answer
from router.cache_salt import tenant_cache_salt
from router.config import Config
from router.errors import InvalidRoute, ModelCallError, NoReplica
from router.planner import DialStore, Planner
from router import request_ids
from router.pool import WorkerPool
from router.strategies.base import Context
from router.trace import Trace
from router.worker_client import WorkerClient, WorkerTls
from router.types import RouteQuery, RouteResult


class RouterCore:
    def __init__(self, config: Config, addresses: dict[str, list[str]], policy=None,
                 api_key_digests: dict[str, str] | None = None, admin_token: str | None = None,
                 worker_tls: WorkerTls | None = None) -> None:
        """`api_key_digests` ({sha256(key): tenant}, router.tenants.key_digests) and `admin_token` feed
        `self.admission`, shared by both ingresses of this replica. `worker_tls` (default: read from
        `config.tls.worker_ca_file`) makes router -> worker gRPC TLS."""
        from router.scorers import build_scorer

        self.config = config
        self.admission = Admission(config, api_key_digests or {}, admin_token)
        scorers = [(build_scorer(s.name, s.params), s.weight) for s in config.router.scorers]
        if worker_tls is None:
            worker_tls = WorkerTls.from_files(config.tls.worker_ca_file, config.tls.worker_server_name)
        from router.discovery import discovery_from_config

        rc = config.router
        self.pool = WorkerPool(addresses, scorers=scorers, max_attempts=rc.max_attempts,
                               client_factory=lambda address: WorkerClient(address, worker_tls),
                               stream_stall_timeout_s=rc.stream_stall_timeout_s,
                               health_interval_s=rc.health_interval_s, health_timeout_s=rc.health_timeout_s,
                               unhealthy_after=rc.unhealthy_after, discovery=discovery_from_config(config))
        self.dials = DialStore(config.dial.default, config.dial.tenants)
        self.planner = Planner(config, self.dials, policy)
        #: Decision log + online per-task correction from feedback (router/feedback.py); None without a policy.
        self.feedback = None
        if config.policy is not None and config.policy.feedback.enabled:
            from router.feedback import FeedbackLoop

            self.feedback = FeedbackLoop(config)
        self.planner.feedback = self.feedback
        from router.metrics import RouterSignals

        #: thinkroute_* Prometheus metrics and the plan mix that coupled scaling reads (router/metrics.py).
        self.signals = RouterSignals.from_config(config, lambda: self.dials.get(""))
        self.replica_id = ""  # the Serve replica holding this core, reported in traces (details.router_replica)

    def validate(self, query: RouteQuery) -> None:
        """Boundary checks that need no model: raise InvalidRoute naming the field."""
        check_caps(query, self.config.limits)
        if not query.query.strip() and not query.messages:
            raise InvalidRoute("the request has no question: set `query` or `messages`")
        if query.messages:
            for i, m in enumerate(query.messages):
                if m.role not in ("system", "user", "assistant", "tool"):
                    raise InvalidRoute(f"messages[{i}].role is {m.role!r}; valid roles are system, user, assistant, tool")
        if query.max_tokens < 0:
            raise InvalidRoute(f"max_tokens must be >= 0 (0 = default {self.config.router.max_tokens}); got {query.max_tokens}")
        if not query.temperature >= 0:  # NaN too
            raise InvalidRoute(f"temperature must be >= 0; got {query.temperature}")
        if not 0 <= query.top_p <= 1:
            raise InvalidRoute(f"top_p must be in [0, 1]; got {query.top_p}")
        if not (query.max_cost >= 0 and query.max_latency_ms >= 0):  # NaN too
            raise InvalidRoute("max_cost and max_latency_ms must be >= 0 (0 = no limit)")
        if query.max_tokens == 0:
            query.max_tokens = self.config.router.max_tokens
        if query.top_p == 0:
            query.top_p = 1.0
        if not query.query and query.messages:
            users = [m.content for m in query.messages if m.role == "user"]
            query.query = users[-1] if users else query.messages[-1].content

    async def route(self, query: RouteQuery, emit: Callable[[str], Awaitable[None]] | None = None) -> RouteResult:
        """Plan and run `query`; stream answer deltas through `emit` when given. Raises RoutingError.
        Every model call carries `query.request_id` to the workers (router/request_ids.py)."""
        with request_ids.bound(query.request_id):
            return await self._route(query, emit)

    async def _route(self, query: RouteQuery, emit: Callable[[str], Awaitable[None]] | None) -> RouteResult:
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.config.router.request_timeout_s
        if query.max_latency_ms:
            deadline = min(deadline, time.monotonic() + query.max_latency_ms / 1e3)
        trace = Trace()
        self.validate(query)
        with trace.stage("plan"):
            plan = await self.planner.plan(query, self.pool)
        plan_key = self.signals.planned(plan.name, plan.strategy.name, plan.models, plan.dial,
                                        trace.stage_ms.get("plan", 0.0) / 1e3)
        while True:  # the policy's plan, then (its pool unavailable, nothing answered yet) the next ranked plans
            ctx = None
            try:
                with trace.stage("plan"):
                    infos = {role: await self.pool.info(model, deadline=deadline) for role, model in plan.models.items()}
                    await plan.strategy.check_plan(infos)
                trace.plan = plan.to_dict()
                ctx = Context(self.pool, plan.models, trace, deadline, emit,
                              cache_salt=tenant_cache_salt(self.config.redis, query.tenant))
                with trace.stage("execute"):
                    result = await plan.strategy.answer(query, ctx)  # run, then flush the unstreamed rest
                break
            except (NoReplica, ModelCallError) as e:
                if e.grpc_code != "UNAVAILABLE" or (ctx is not None and ctx.emitted):
                    raise
                nxt = self.planner.fallback(plan, query, e)
                if nxt is None:
                    raise
                plan = nxt
        trace.details.update(result.details)
        if self.feedback is not None and plan.name:
            routed = RouteResult(request_id=query.request_id, text="", final_answer="", finish_reason="",
                                 trace={"usage": trace.usage(), "stage_ms": {"total": (time.perf_counter() - t0) * 1e3}})
            await self.feedback.record(query, plan, routed, dict(self.config.policy.prices))
        if self.replica_id:
            trace.details["router_replica"] = self.replica_id
        trace.stage_ms["total"] = (time.perf_counter() - t0) * 1e3
        trace_dict = trace.to_dict()
        self.signals.finished(plan_key, trace_dict)
        return RouteResult(request_id=query.request_id, text=result.text,
                           final_answer=extract_final_answer(result.text), finish_reason=result.finish_reason,
                           trace=trace_dict)

    async def close(self) -> None:
        await self.pool.close()
        if self.feedback is not None:
            await self.feedback.close()
