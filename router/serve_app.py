"""The Ray Serve application: the router deployment and its two ingresses.

`build_app(config, addresses)` returns the Application; `thinkroute serve` runs it with
Ray Serve's gRPC proxy (`grpc_servicer_functions` = the Router servicer) so clients call
`thinkroute.v1.Router/Generate` on `serve.grpc_port`, and with Ray Serve's HTTP proxy on
`serve.http_port`, where the same deployment serves the OpenAI-compatible API
(router/http_api.py, built per replica by `__serve_build_asgi_app__`). Both are thin adapters
over the replica's one `RouterCore`: wire format -> RouteQuery -> RouterCore.route -> wire
format; RoutingError -> its gRPC status / HTTP status.

Dial changes (SetDial) go to a named Ray actor that every router replica re-reads in the
background every second; the replica that receives SetDial applies it at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any, AsyncIterator

import grpc
import ray
from ray import serve

from thinkroute.v1 import router_pb2 as rpb

from router.config import Config
from router.errors import PermissionDenied, RoutingError
from router.http_api import OpenAIFrontend, build_http_app
from router.router_wire import query_from_pb, result_to_pb
from router.service import RouterCore
from router.tenants import key_digests

log = logging.getLogger("thinkroute.router")
ROUTER_SERVICER = "thinkroute.v1.router_pb2_grpc.add_RouterServicer_to_server"
DIAL_ACTOR = "thinkroute-dials"
ADMIN_METADATA = "x-thinkroute-admin-token"


@ray.remote(num_cpus=0)
class DialRegistry:
    """Source of truth for runtime dial changes across router replicas."""

    def __init__(self, default: float, tenants: dict[str, float]) -> None:
        self.default, self.tenants = default, dict(tenants)

    def set(self, value: float, tenant: str = "") -> None:
        if tenant:
            self.tenants[tenant] = value
        else:
            self.default = value

    def get_all(self) -> tuple[float, dict[str, float]]:
        return self.default, dict(self.tenants)


def _abort(grpc_context, e: Exception) -> None:
    code = getattr(grpc.StatusCode, getattr(e, "grpc_code", "INTERNAL"), grpc.StatusCode.INTERNAL)
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(str(e))


class RouterIngress:
    """Router deployment: gRPC methods named after thinkroute.v1.Router's RPCs, and the OpenAI HTTP API.

    `api_key_digests` ({sha256(key): tenant}, from `router.tenants.key_digests`) authenticate HTTP clients.
    """

    def __init__(self, config: dict[str, Any], addresses: dict[str, list[str]], admin_token: str | None,
                 api_key_digests: dict[str, str] | None = None) -> None:
        self.config = Config.model_validate(config)
        self.core = RouterCore(self.config, addresses, policy=_load_policy(self.config))
        self.admin_token = admin_token
        self.http = OpenAIFrontend(self.core, self.config, api_key_digests or {})
        self._dials = DialRegistry.options(name=DIAL_ACTOR, get_if_exists=True, lifetime="detached").remote(
            self.config.dial.default, self.config.dial.tenants)
        self._refresh_task: asyncio.Task | None = None

    def _ensure_refresh(self) -> None:
        if self._refresh_task is None:
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_dials())

    async def _refresh_dials(self) -> None:
        while True:
            try:
                default, tenants = await self._dials.get_all.remote()
                self.core.dials.default, self.core.dials.tenants = default, tenants
            except Exception:  # noqa: BLE001 - keep serving with the last known dials
                log.warning("could not refresh dials from %s", DIAL_ACTOR)
            await asyncio.sleep(1.0)

    # -- thinkroute.v1.Router ------------------------------------------------------------------
    async def Generate(self, request: rpb.RouteRequest, grpc_context=None) -> rpb.RouteResponse:
        self._ensure_refresh()
        try:
            result = await self.core.route(query_from_pb(request))
            return result_to_pb(result)
        except RoutingError as e:
            _abort(grpc_context, e)
            raise

    async def GenerateStream(self, request: rpb.RouteRequest, grpc_context=None) -> AsyncIterator[rpb.RouteStreamResponse]:
        self._ensure_refresh()
        queue: asyncio.Queue = asyncio.Queue()

        async def emit(delta: str) -> None:
            await queue.put(delta)

        async def run():
            try:
                return await self.core.route(query_from_pb(request), emit=emit)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while (delta := await queue.get()) is not None:
                yield rpb.RouteStreamResponse(text_delta=delta)
            result = await task
        except RoutingError as e:
            _abort(grpc_context, e)
            raise
        finally:
            if not task.done():
                task.cancel()
        yield rpb.RouteStreamResponse(final=result_to_pb(result))

    def _check_admin(self, grpc_context) -> None:
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        given = metadata.get(ADMIN_METADATA, "")
        if not self.admin_token or not secrets.compare_digest(given, self.admin_token):
            raise PermissionDenied(
                f"admin calls need metadata {ADMIN_METADATA!r} equal to the token in "
                f"${self.config.serve.admin_token_env}" + ("" if self.admin_token else " (not set on this router)"))

    async def SetDial(self, request: rpb.SetDialRequest, grpc_context=None) -> rpb.DialResponse:
        try:
            self._check_admin(grpc_context)
            value = self.core.dials.set(request.dial, request.tenant)
            await self._dials.set.remote(value, request.tenant)
            return rpb.DialResponse(dial=value, tenant=request.tenant)
        except RoutingError as e:
            _abort(grpc_context, e)
            raise

    async def GetDial(self, request: rpb.GetDialRequest, grpc_context=None) -> rpb.DialResponse:
        return rpb.DialResponse(dial=self.core.dials.get(request.tenant), tenant=request.tenant)

    async def PoolStats(self, request: rpb.PoolStatsRequest, grpc_context=None) -> rpb.PoolStatsResponse:
        stats = await self.core.pool.stats()
        return rpb.PoolStatsResponse(pools=[rpb.PoolStats(**s) for s in stats])

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
    """The router Application for `serve.run`, configured by `config` with these worker addresses."""
    admin_token = os.environ.get(config.serve.admin_token_env) or None
    digests = key_digests(config.http)  # keys are read here, from the environment; only digests travel
    deployment = serve.deployment(
        serve.ingress()(RouterIngress),
        name="router",
        num_replicas=config.serve.router_replicas,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    return deployment.bind(config.model_dump(mode="json"), addresses, admin_token, digests)


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
