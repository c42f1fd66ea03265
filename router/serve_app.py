"""The Ray Serve application: the router deployment, its two ingresses, and the app's dial state.

`build_app(config, addresses)` returns the Application; `thinkroute serve` runs it with
Ray Serve's gRPC proxy (`grpc_servicer_functions` = GRPC_SERVICERS: the Router and Cluster servicers) so
clients call `thinkroute.v1.Router/Generate` (and autoscalers `thinkroute.v1.Cluster/*`) on `serve.grpc_port`, and with Ray Serve's HTTP proxy on
`serve.http_port`, where the same deployment serves the OpenAI-compatible API
(router/http_api.py, built per replica by `__serve_build_asgi_app__`). Both are thin adapters
over the replica's one `RouterCore`: wire format -> Caller + RouteQuery -> core.admission.admit
(router/admission.py) -> RouterCore.route -> wire format; RoutingError -> its gRPC status /
HTTP status; anything else -> INTERNAL / 500 carrying only a logged error id.

Dial state has one owner per application: the `DialState` deployment (one replica, bound into
the same app, so it is created and deleted with it and never shared with another app). Runtime
changes (SetDial) go there; every router replica loads its state in its constructor and then
long-polls it for newer versions from a task started there too, so a replica that only serves
HTTP (or was started later) follows every change. If the DialState replica is restarted, it comes
back with the configured dials (a new epoch) and the router replicas follow it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
from ray import serve

from thinkroute.v1 import router_pb2 as rpb

from router.admission import ADMIN_METADATA, grpc_caller
from router.cluster_service import CLUSTER_SERVICER
from router.config import Config
from router.errors import RateLimited, RoutingError, internal_error
from router.http_api import OpenAIFrontend, build_http_app
from router.planner import DialStore
from router.router_wire import query_from_pb, result_to_pb
from router.service import RouterCore
from router.tenants import key_digests
from router.worker_client import WorkerTls

log = logging.getLogger("thinkroute.router")
ROUTER_SERVICER = "thinkroute.v1.router_pb2_grpc.add_RouterServicer_to_server"
#: Both gRPC services the application serves (Ray Serve's gRPCOptions.grpc_servicer_functions).
GRPC_SERVICERS = [ROUTER_SERVICER, CLUSTER_SERVICER]
__all__ = ["ADMIN_METADATA", "GRPC_SERVICERS", "ROUTER_SERVICER", "DialState", "RouterIngress", "app_builder", "build_app"]
#: How long one long-poll of the dial state waits for a change before it is renewed.
DIAL_WATCH_S = 30.0


class DialState:
    """The application's runtime dial state (a one-replica Serve deployment): versioned, long-polled."""

    def __init__(self, default: float, tenants: dict[str, float]) -> None:
        self.store = DialStore(default, tenants, epoch=uuid.uuid4().hex)
        self._changed = asyncio.Event()

    async def set(self, value: float, tenant: str = "") -> dict[str, Any]:
        """Change the default (or one tenant's) dial; the new snapshot. InvalidRoute outside [0, 1]."""
        self.store.set(value, tenant)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.store.snapshot()

    async def get(self) -> dict[str, Any]:
        return self.store.snapshot()

    async def watch(self, epoch: str, version: int, timeout_s: float = DIAL_WATCH_S) -> dict[str, Any]:
        """The snapshot as soon as it differs from (epoch, version), or after `timeout_s` in any case."""
        if epoch == self.store.epoch and version >= self.store.version:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.store.snapshot()


def _set_status(grpc_context, e: RoutingError) -> None:
    if grpc_context is None:
        return
    grpc_context.set_code(getattr(grpc.StatusCode, e.grpc_code, grpc.StatusCode.INTERNAL))
    grpc_context.set_details(str(e))
    if isinstance(e, RateLimited):
        grpc_context.set_trailing_metadata([("retry-after", str(e.retry_after_s))])


def _as_routing_error(e: BaseException, where: str) -> RoutingError:
    """RoutingErrors pass; anything else is logged under an id and becomes InternalError(id)."""
    return e if isinstance(e, RoutingError) else internal_error(e, log, where)


class RouterIngress:
    """Router deployment: gRPC methods named after thinkroute.v1.Router's RPCs, and the OpenAI HTTP API.

    `api_key_digests` ({sha256(key): tenant}, from `router.tenants.key_digests`) authenticate both
    ingresses; `dial_state` is the app's DialState handle (None: this replica's dials are its own);
    `worker_ca_pem` (bytes) turns on TLS to the workers.
    """

    async def __init__(self, config: dict[str, Any], addresses: dict[str, list[str]], admin_token: str | None,
                       api_key_digests: dict[str, str] | None = None, dial_state=None,
                       worker_ca_pem: bytes | None = None, policy_state=None, scaler=None) -> None:
        self.config = Config.model_validate(config)
        tls = WorkerTls(worker_ca_pem, self.config.tls.worker_server_name) if worker_ca_pem else None
        self.core = RouterCore(self.config, addresses, policy=_load_policy(self.config),
                               api_key_digests=api_key_digests or {}, admin_token=admin_token, worker_tls=tls)
        try:
            self.core.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (tests): no replica id in traces
            pass
        self.http = OpenAIFrontend(self.core, self.config, api_key_digests or {})
        self._dial_state = dial_state
        self._dial_task: asyncio.Task | None = None
        if dial_state is not None:
            self.core.dials.apply(await dial_state.get.remote())
            self._dial_task = asyncio.get_running_loop().create_task(self._follow_dials())
        # `thinkroute policy reload`: swap the policy artifact here and in every replica (router/learn/serving.py)
        from router.learn.serving import PolicyReloader

        self.core.policy_reloader = PolicyReloader(self.core, policy_state)
        await self.core.policy_reloader.start_following()
        # thinkroute.v1.Cluster (router/cluster_service.py); `scaler` is the app's PoolScaler handle, followed here.
        from router.cluster_service import ClusterService

        self.cluster = ClusterService(self.core, self.config, scaler)
        self._scaler_task = asyncio.get_running_loop().create_task(self.cluster.follow()) if scaler is not None else None
        # Ray-hosted pools autoscaled by Serve read this replica's plan-mix demand (router/ray_autoscaling.py).
        from router.ray_autoscaling import start_demand_publisher

        self._demand_task = start_demand_publisher(self.core.signals.mix, self.config, getattr(self.core, "replica_id", None))

    async def _follow_dials(self) -> None:
        """Long-poll the app's DialState for as long as this replica lives."""
        while True:
            try:
                snap = await self._dial_state.watch.remote(self.core.dials.epoch, self.core.dials.version)
                if self.core.dials.apply(snap):
                    log.info("dials now version %s: default %s, tenants %s", snap["version"], snap["default"],
                             snap["tenants"])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving with the last known dials, try again
                log.warning("could not read the dial state; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1.0)

    # -- thinkroute.v1.Router ------------------------------------------------------------------
    async def Generate(self, request: rpb.RouteRequest, grpc_context=None) -> rpb.RouteResponse:
        try:
            query = query_from_pb(request)
            with self.core.admission.admit(grpc_caller(grpc_context), query) as ticket:
                result = await self.core.route(query)
                ticket.settle(result.trace)
            return result_to_pb(result)
        except Exception as e:  # noqa: BLE001 - every failure leaves as a status
            err = _as_routing_error(e, "Generate")
            _set_status(grpc_context, err)
            if isinstance(err, RateLimited) and grpc_context is not None:
                return rpb.RouteResponse()  # the status is the answer; returning keeps the retry-after trailer
            raise err from None

    async def GenerateStream(self, request: rpb.RouteRequest, grpc_context=None) -> AsyncIterator[rpb.RouteStreamResponse]:
        try:
            query = query_from_pb(request)
            ticket = self.core.admission.admit(grpc_caller(grpc_context), query)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "GenerateStream")
            _set_status(grpc_context, err)
            raise err from None
        queue: asyncio.Queue = asyncio.Queue()

        async def emit(delta: str) -> None:
            await queue.put(delta)

        async def run():
            try:
                return await self.core.route(query, emit=emit)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(run())
        failure: BaseException | None = None
        try:
            while (delta := await queue.get()) is not None:
                yield rpb.RouteStreamResponse(text_delta=delta)
            result = await task
            ticket.settle(result.trace)
        except Exception as e:  # noqa: BLE001
            failure = e
            err = _as_routing_error(e, "GenerateStream")
            _set_status(grpc_context, err)
            raise err from None
        finally:
            if not task.done():
                task.cancel()
            ticket.release(failure)
        yield rpb.RouteStreamResponse(final=result_to_pb(result))

    async def SetDial(self, request: rpb.SetDialRequest, grpc_context=None) -> rpb.DialResponse:
        try:
            self.core.admission.check_admin(grpc_caller(grpc_context))
            if self._dial_state is not None:
                self.core.dials.apply(await self._dial_state.set.remote(request.dial, request.tenant))
            else:
                self.core.dials.set(request.dial, request.tenant)
            return rpb.DialResponse(dial=self.core.dials.get(request.tenant), tenant=request.tenant)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "SetDial")
            _set_status(grpc_context, err)
            raise err from None

    async def GetDial(self, request: rpb.GetDialRequest, grpc_context=None) -> rpb.DialResponse:
        try:
            self.core.admission.may_read_tenant(grpc_caller(grpc_context), request.tenant)
            return rpb.DialResponse(dial=self.core.dials.get(request.tenant), tenant=request.tenant)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "GetDial")
            _set_status(grpc_context, err)
            raise err from None

    async def ReloadPolicy(self, request: rpb.ReloadPolicyRequest, grpc_context=None) -> rpb.ReloadPolicyResponse:
        try:
            self.core.admission.check_admin(grpc_caller(grpc_context))
            got = await self.core.policy_reloader.reload(request.artifact)
            return rpb.ReloadPolicyResponse(**got)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "ReloadPolicy")
            _set_status(grpc_context, err)
            raise err from None

    async def Feedback(self, request: rpb.FeedbackRequest, grpc_context=None) -> rpb.FeedbackResponse:
        """An outcome for an earlier answer of the caller's tenant (router/feedback.py). NOT_FOUND: unknown/expired id."""
        try:
            tenant = self.core.admission.authenticate(grpc_caller(grpc_context))
            if self.core.feedback is None:
                from router.errors import NotFound

                raise NotFound("feedback is off on this router (no policy, or policy.feedback.enabled is false)")
            out = await self.core.feedback.feedback(
                request.request_id, tenant, request.score if request.HasField("score") else None,
                request.correct if request.HasField("correct") else None, request.task or None)
            return rpb.FeedbackResponse(**out)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "Feedback")
            _set_status(grpc_context, err)
            raise err from None

    async def PoolStats(self, request: rpb.PoolStatsRequest, grpc_context=None) -> rpb.PoolStatsResponse:
        try:
            self.core.admission.authenticate(grpc_caller(grpc_context))
            stats = await self.core.pool.stats()
            return rpb.PoolStatsResponse(pools=[rpb.PoolStats(**s) for s in stats])
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "PoolStats")
            _set_status(grpc_context, err)
            raise err from None

    # -- thinkroute.v1.Cluster (router/cluster_service.py) ---------------------------------------------
    async def GetPoolStats(self, request, grpc_context=None):
        try:
            self.core.admission.authenticate(grpc_caller(grpc_context))
            return (await self.cluster.stats(list(request.pools)))[0]
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "GetPoolStats")
            _set_status(grpc_context, err)
            raise err from None

    async def WatchPoolStats(self, request, grpc_context=None):
        try:
            self.core.admission.authenticate(grpc_caller(grpc_context))
            async for stats in self.cluster.watch(list(request.pools), request.interval_s):
                yield stats
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "WatchPoolStats")
            _set_status(grpc_context, err)
            raise err from None

    async def GetDesiredReplicas(self, request, grpc_context=None):
        try:
            self.core.admission.authenticate(grpc_caller(grpc_context))
            return await self.cluster.desired(list(request.pools))
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "GetDesiredReplicas")
            _set_status(grpc_context, err)
            raise err from None

    async def SetReplicas(self, request, grpc_context=None):
        try:
            self.core.admission.check_admin(grpc_caller(grpc_context))
            return await self.cluster.set_replicas(request.pool, request.replicas)
        except Exception as e:  # noqa: BLE001
            err = _as_routing_error(e, "SetReplicas")
            _set_status(grpc_context, err)
            raise err from None

    def __serve_build_asgi_app__(self):
        """Called by Ray Serve once per replica, after __init__: the HTTP ingress over this replica's core."""
        return build_http_app(self.http)

    async def check_health(self) -> None:
        """Ray Serve health check: the router is healthy while its config loads (workers have their own)."""


def _load_policy(config: Config):
    """The planning policy named by `config.policy` (tracker issue 4), or None for fixed plans."""
    if not config.policy:
        return None
    from router.policy.planning import build_planning_policy

    return build_planning_policy(config)


def build_app(config: Config, addresses: dict[str, list[str]]) -> serve.Application:
    """The router Application for `serve.run`, configured by `config` with these worker addresses.

    Secrets are read here, on the host that builds the app: API keys (only their digests travel) and
    the admin token from the environment; the workers' CA from `tls.worker_ca_file`."""
    admin_token = os.environ.get(config.serve.admin_token_env) or None
    digests = key_digests(config.auth)
    worker_tls = WorkerTls.from_files(config.tls.worker_ca_file, config.tls.worker_server_name)
    dials = serve.deployment(DialState, name="dials", num_replicas=1, max_ongoing_requests=10_000,
                             ray_actor_options={"num_cpus": 0})
    deployment = serve.deployment(
        serve.ingress()(RouterIngress),
        name="router",
        num_replicas=config.serve.router_replicas,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    from router.learn.serving import PolicyState

    policy_state = serve.deployment(PolicyState, name="policy_state", num_replicas=1, max_ongoing_requests=10_000,
                                    ray_actor_options={"num_cpus": 0})
    from router.cluster_service import PoolScaler

    scaler = serve.deployment(PoolScaler, name="scaler", num_replicas=1, max_ongoing_requests=10_000,
                              ray_actor_options={"num_cpus": 0})
    return deployment.bind(config.model_dump(mode="json"), addresses, admin_token, digests,
                           dials.bind(config.dial.default, config.dial.tenants),
                           worker_tls.ca_pem if worker_tls else None,
                           policy_state.bind(config.policy.artifact if config.policy else None),
                           scaler=scaler.bind(config.model_dump(mode="json"), addresses,
                                              str((Path(config.run_dir) / "scaler").resolve())))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for `serve run` / a RayService `import_path: router.serve_app:app_builder`.

    args: `config` (path to the YAML config) and `addresses` ({model: ["host:port", ...]}) of
    workers started elsewhere (e.g. the Kubernetes worker Deployments in cluster/workers.yaml);
    when `addresses` is omitted, each pool's `addresses` from the config are used.
    """
    from router.config import load_config

    config = load_config(args.get("config"))
    addresses = args.get("addresses") or {name: list(p.addresses) for name, p in config.models.items()}
    missing = [m for m, a in addresses.items() if not a]
    if missing:
        raise ValueError(f"no worker addresses for models {missing}: set models.<name>.addresses in the config "
                         "or pass `addresses` in the application args")
    return build_app(config, addresses)
