"""The OpenAI-compatible HTTP API: POST /v1/chat/completions, GET /v1/models, GET /health.

A thin adapter, like the gRPC methods in router/serve_app.py: OpenAI JSON -> RouteQuery ->
`RouterCore.route` (the one request path) -> OpenAI JSON. `RouterIngress` builds this app in each
replica (`build_http_app(OpenAIFrontend(...))`), so both ingresses share one `RouterCore`.

Model names select the routing (see `parse_model_name`, docs/openai_api.md):
    thinkroute              the policy / default plan with the tenant's default dial
    thinkroute:dial=0.2     the same with this dial
    <model>                 `direct` on that model pool (e.g. smollm2-135m)
    strategy/<name>         that strategy (e.g. strategy/specreason)
Per-request overrides come in the body's `thinkroute` object (`extra_body` in the openai client):
{dial, strategy, max_cost, max_latency_ms, options, trace}.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from router import sessions
from router.config import Config
from router.admission import Admission, Ticket, http_caller
from router.errors import InternalError, InvalidRoute, RateLimited, RoutingError, Unauthenticated, internal_error
from workers.types import ChatMessage
from router.strategies import get_strategy, strategy_names
from router.chat import turn as chat_turn
from router.chat.output import ChunkWriter, assistant_message, finish_reason
from router.chat.schema import BadField
from router.chat.tools import Family, ToolTurn, family_for
from router.chat.usage import answered_by, usage_from_trace
from router.planner import CONSTRAINED_STRATEGIES
from router.types import RouteQuery, RouteResult

log = logging.getLogger("thinkroute.http")

POLICY_MODEL = "thinkroute"
STRATEGY_PREFIX = "strategy/"
PLAN_HEADER = "x-thinkroute-plan"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    @classmethod
    def from_routing(cls, e: RoutingError) -> "ApiError":
        if isinstance(e, RateLimited):
            return cls(429, str(e), code="rate_limit_exceeded", headers={"retry-after": str(e.retry_after_s)})
        if isinstance(e, Unauthenticated):
            return cls(401, str(e), code="invalid_api_key", headers={"www-authenticate": "Bearer"})
        if isinstance(e, InternalError):
            return cls(500, str(e), code="internal_error")
        code = {"NOT_FOUND": "model_not_found" if "model" in str(e) else "not_found"}.get(e.grpc_code, e.grpc_code.lower())
        return cls(e.http_status, str(e), code=code,
                   headers={"retry-after": "1"} if e.http_status in (429, 503) else None)


# -- request models ----------------------------------------------------------------------------
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None   # assistant: the calls it made
    tool_call_id: str | None = None                   # tool: the call this result answers
    name: str | None = None                           # function (legacy): the function's name

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def as_dict(self) -> dict[str, Any]:
        """The plain form router/chat/turn.py reads."""
        return {"role": self.role, "content": self.text(), "tool_calls": self.tool_calls,
                "tool_call_id": self.tool_call_id, "name": self.name}


class StreamOptions(_Lenient):
    include_usage: bool = False


class ThinkrouteOptions(BaseModel):
    """The `thinkroute` extension object in the request body."""

    model_config = ConfigDict(extra="forbid")
    dial: float | None = Field(None, ge=0, le=1)
    strategy: str | None = None
    max_cost: float = Field(0.0, ge=0)
    max_latency_ms: float = Field(0.0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)
    trace: bool = False
    session: str | None = None  # agent session key (router/sessions.py); also the x-session-id header
    task: str = Field("", max_length=128)  # the request's task: feedback on it trains the policy's per-task correction
    # A target instead of a dial (router/policy/calibrate.py): "quality >= 0.95" / "budget <= $2 per 1k requests",
    # or the numbers themselves.
    target: str | None = Field(None, max_length=80)
    quality_target: float | None = Field(None, gt=0, le=1)
    budget_per_1k: float | None = Field(None, gt=0)


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    thinkroute: ThinkrouteOptions = Field(default_factory=ThinkrouteOptions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return [v] if isinstance(v, str) else v


@dataclass(frozen=True)
class Target:
    """What a model name asks for."""

    strategy: str | None = None
    model: str | None = None
    dial: float | None = None


def parse_model_name(name: str, config: Config) -> Target:
    """`thinkroute`, `thinkroute:dial=X`, a model pool name, or `strategy/<name>`; ApiError 404 otherwise."""
    if name == POLICY_MODEL:
        return Target()
    if name.startswith(POLICY_MODEL + ":"):
        key, _, value = name[len(POLICY_MODEL) + 1:].partition("=")
        try:
            dial = float(value) if key == "dial" else None
        except ValueError:
            dial = None
        if dial is None or not 0 <= dial <= 1:
            raise ApiError(400, f"model {name!r}: write the dial as `thinkroute:dial=<number in [0, 1]>`, "
                                "e.g. thinkroute:dial=0.2", param="model", code="invalid_model")
        return Target(dial=dial)
    if name in config.models:
        return Target(model=name)
    if name.startswith(STRATEGY_PREFIX) and name[len(STRATEGY_PREFIX):] in strategy_names():
        return Target(strategy=name[len(STRATEGY_PREFIX):])
    raise ApiError(404, f"unknown model {name!r}; available models are {model_names(config)} "
                        "(and thinkroute:dial=<0..1>)", param="model", code="model_not_found")


def model_names(config: Config) -> list[str]:
    """Every model name the API accepts, except the continuous `thinkroute:dial=X` family."""
    return [POLICY_MODEL, *config.models, *(STRATEGY_PREFIX + s for s in strategy_names())]


def reachable_models(req: ChatCompletionRequest, target: Target, config: Config) -> list[str]:
    """The model pools a tool-calling or structured-output turn of this request may be answered by.

    Such turns run only on plans in CONSTRAINED_STRATEGIES (`direct`): a named model; the default
    model for `strategy/direct`; the policy's `direct` candidates; else the configured default.
    """
    strategy = req.thinkroute.strategy or target.strategy
    if target.model:
        return [target.model]
    if strategy:
        if strategy in CONSTRAINED_STRATEGIES:
            return [config.router.default_model]
        cls = get_strategy(strategy)
        return [config.router.roles[r] for r in cls.roles if r in config.router.roles]
    if config.policy is not None:
        models = [c.model or config.router.default_model for c in config.policy.candidates.values()
                  if c.strategy in CONSTRAINED_STRATEGIES]
        return list(dict.fromkeys(models)) or [config.router.default_model]
    return [config.router.default_model]


def tool_family(models: list[str], config: Config) -> Family:
    """The one tool-call family of `models` (BadField when they differ: the request must name a model)."""
    families = [family_for(config.models[m].model or m) for m in models]
    formats = {f.format.name for f in families}
    if len(formats) > 1:
        raise BadField("model", f"the models this request may reach ({models}) use different tool-call formats "
                                f"({sorted(formats)}): name one model")
    slow = next((f for f in families if not f.parallel), None)
    return slow or families[0]


def chat_query(req: ChatCompletionRequest, target: Target, tenant: str, request_id: str | None,
               config: Config) -> tuple[RouteQuery, ToolTurn]:
    """OpenAI request -> (RouteQuery, ToolTurn). Raises ApiError 400 naming the field.

    The turn holds the declared tools, `tool_choice`, `parallel_tool_calls` and `response_format`
    (router/chat/turn.py); the query carries the conversation with tool calls and results written
    in the answering family's format and the structured-output constraint the worker enforces.
    """
    try:
        turn = chat_turn.tool_turn(req.tools, req.tool_choice, req.parallel_tool_calls, req.response_format,
                                   tool_family(reachable_models(req, target, config), config))
        messages = chat_turn.render_messages([m.as_dict() for m in req.messages], turn)
        constraint = chat_turn.output_constraint(turn)
    except BadField as e:
        raise ApiError(400, str(e), param=e.param, code=e.code) from e
    strategy = req.thinkroute.strategy or target.strategy
    if (turn.active or constraint is not None) and strategy and strategy not in CONSTRAINED_STRATEGIES:
        field = "tools" if turn.active else "response_format"
        raise ApiError(400, f"strategy {strategy!r} cannot answer with tool calls or structured output (its answer "
                            f"mixes several model calls); send `{field}` to a model name, strategy/direct or "
                            "thinkroute (the policy then chooses among plans that can)", param=field,
                       code="unsupported_value")
    query = to_route_query(req, target, tenant, request_id, messages=messages)
    query.constraint = constraint
    query.tools = tuple(t.name for t in turn.tools) if turn.active else ()
    return query, turn


def to_route_query(req: ChatCompletionRequest, target: Target, tenant: str, request_id: str | None = None,
                   messages: list[ChatMessage] | None = None) -> RouteQuery:
    """OpenAI request -> RouteQuery (the same type the gRPC ingress builds). Raises ApiError 400.

    `messages`: the conversation as rendered by `chat_query` (tool calls and results included);
    by default the request's messages as they are (tool messages need `chat_query`).
    """
    if (req.n or 1) != 1:
        raise ApiError(400, f"n = {req.n}: this router returns one choice per request; send n=1 (or omit it)",
                       param="n", code="unsupported_value")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this endpoint; omit `logprobs`", param="logprobs",
                       code="unsupported_value")
    ext = req.thinkroute
    if ext.strategy and target.strategy and ext.strategy != target.strategy:
        raise ApiError(400, f"model {req.model!r} and thinkroute.strategy {ext.strategy!r} disagree: name the "
                            "strategy in one place", param="thinkroute.strategy")
    if messages is None:
        messages = [ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in req.messages]
    q = RouteQuery(
        messages=messages, strategy=ext.strategy or target.strategy, model=target.model, options=dict(ext.options),
        max_tokens=req.max_completion_tokens or req.max_tokens or 0,
        temperature=req.temperature if req.temperature is not None else 0.0,
        top_p=req.top_p if req.top_p is not None else 1.0, seed=req.seed, stop=list(req.stop or []),
        dial=ext.dial if ext.dial is not None else target.dial, tenant=tenant,
        max_cost=ext.max_cost, max_latency_ms=ext.max_latency_ms, task=ext.task,
        quality_target=ext.quality_target, budget_per_1k=ext.budget_per_1k,
    )
    if ext.target is not None:
        from router.policy.calibrate import parse_target

        if ext.quality_target is not None or ext.budget_per_1k is not None:
            raise ApiError(400, "thinkroute.target and thinkroute.quality_target/budget_per_1k are both set: use one",
                           param="thinkroute.target")
        try:
            t = parse_target(ext.target)
        except InvalidRoute as e:
            raise ApiError(400, str(e), param="thinkroute.target") from None
        q.quality_target, q.budget_per_1k = t.quality, t.budget_per_1k
    if request_id:
        q.request_id = request_id
    return q


# -- responses ---------------------------------------------------------------------------------
def plan_summary(trace: dict[str, Any]) -> str:
    """`direct smollm2-135m`, `specreason large=gemma3-270m small=smollm2-135m`."""
    plan = trace.get("plan", {})
    models = plan.get("models", {})
    if list(models) == ["model"]:
        return f"{plan.get('strategy', '')} {models['model']}"
    return " ".join([plan.get("strategy", ""), *(f"{r}={m}" for r, m in sorted(models.items()))])


def prices(config: Config) -> dict[str, float]:
    """USD per million tokens per model pool: the policy's prices ({} when no policy is configured)."""
    return dict(config.policy.prices) if config.policy is not None else {}


def completion_body(result: RouteResult, turn: ToolTurn | None, created: int, trace: bool,
                    price: dict[str, float] | None = None) -> dict[str, Any]:
    """The `chat.completion` object: the answering model, the message (content and/or tool calls), usage with cost."""
    message, calls = assistant_message(turn, result.text)
    body = {
        "id": f"chatcmpl-{result.request_id}", "object": "chat.completion", "created": created,
        "model": answered_by(result.trace),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result.finish_reason, calls),
                     "logprobs": None}],
        "usage": usage_from_trace(result.trace, price), "system_fingerprint": None,
    }
    if trace:
        body["thinkroute_trace"] = result.trace
    return body


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class OpenAIFrontend:
    """The OpenAI API over one RouterCore (anything with `route(query, emit=None)`, `config`, `pool` and
    `admission`, the router/admission.py step both ingresses share)."""

    def __init__(self, core, config: Config, digests: dict[str, str] | None = None, clock=time.monotonic) -> None:
        """`digests` and `clock` only build an Admission for a core that has none (a test double); a
        RouterCore's own `admission` is shared with the gRPC methods of its replica."""
        self.core, self.config = core, config
        self.admission = getattr(core, "admission", None) or Admission(config, digests or {}, clock=clock)

    def _tenant(self, request: Request) -> str:
        """Authenticate (401 naming what to send) and bound the body's declared size (413)."""
        try:
            tenant = self.admission.authenticate(http_caller(request))
        except Unauthenticated as e:
            raise ApiError.from_routing(e) from None
        size = request.headers.get("content-length")
        bound = self.config.limits.max_body_bytes
        if size is not None and size.isdigit() and int(size) > bound:
            raise ApiError(413, f"the request body has {size} bytes; at most {bound} are accepted "
                                "(limits.max_body_bytes)", code="request_too_large")
        return tenant

    def _admit(self, request: Request, query: RouteQuery) -> Ticket:
        """The admission step (tenant from the credential, rate limits, quotas) for `query`."""
        try:
            return self.admission.admit(http_caller(request), query)
        except RoutingError as e:
            raise ApiError.from_routing(e) from None

    async def chat_completions(self, request: Request) -> Response:
        ticket: Ticket | None = None
        streaming = False
        failure: BaseException | None = None
        try:
            tenant = self._tenant(request)
            req = _parse(await request.body())
            query, turn = chat_query(req, parse_model_name(req.model, self.config), tenant,
                                     request.headers.get("x-request-id"), self.config)
            query.session = sessions.explicit_key(req.thinkroute.session, request.headers.get(sessions.SESSION_HEADER),
                                                  req.prompt_cache_key)
            ticket = self._admit(request, query)
            if req.stream:
                response = await self._stream(req, query, ticket, turn)
                streaming = True
                return response
            result = await self.core.route(query)
            ticket.settle(result.trace)
        except ApiError as e:
            failure = e
            return e.response()
        except RoutingError as e:
            failure = e
            return ApiError.from_routing(e).response()
        except Exception as e:  # noqa: BLE001 - logged under an id; the client gets the id only
            failure = e
            return ApiError.from_routing(internal_error(e, log, "chat_completions")).response()
        finally:
            if ticket is not None and not streaming:
                ticket.release(failure)
        body = completion_body(result, turn, int(time.time()), req.thinkroute.trace, prices(self.config))
        return JSONResponse(body, headers={PLAN_HEADER: plan_summary(result.trace),
                                           "x-request-id": result.request_id})

    async def _stream(self, req: ChatCompletionRequest, query: RouteQuery, ticket: Ticket,
                      turn: ToolTurn | None = None) -> Response:
        """SSE chunks; errors before the first delta are answered as plain JSON errors with their status.
        The ticket is released when the stream ends (by the caller on an early error, else by `events`)."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def run() -> RouteResult:
            try:
                return await self.core.route(query, emit=queue.put)
            finally:
                queue.put_nowait(done)

        task = asyncio.get_running_loop().create_task(run())
        try:
            first = await queue.get()
        except BaseException:
            task.cancel()  # the client went away before the first delta (the proxy cancelled us): stop the model calls
            raise
        if first is done:
            try:
                await task
            except RoutingError as e:
                raise ApiError.from_routing(e) from e
            except Exception as e:  # noqa: BLE001
                raise ApiError.from_routing(internal_error(e, log, "chat_completions stream")) from None
        head = {"id": f"chatcmpl-{query.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": req.model}
        writer = ChunkWriter(head, turn, bool(req.stream_options and req.stream_options.include_usage))

        async def events():
            item = first
            failure: BaseException | None = None
            try:
                for obj in writer.start():
                    yield _sse(obj)
                while item is not done:
                    for obj in writer.delta(item):
                        yield _sse(obj)
                    item = await queue.get()
                try:
                    result = await task
                except Exception as e:  # noqa: BLE001 - RoutingErrors as they are, anything else by id
                    failure = e
                    err = e if isinstance(e, RoutingError) else internal_error(e, log, "chat_completions stream")
                    yield _sse(ApiError.from_routing(err).body())
                    yield b"data: [DONE]\n\n"
                    return
                ticket.settle(result.trace)
                more = {"thinkroute_plan": plan_summary(result.trace)}
                if req.thinkroute.trace:
                    more["thinkroute_trace"] = result.trace
                usage = usage_from_trace(result.trace, prices(self.config))
                for obj in writer.finish(result.finish_reason, usage, answered_by(result.trace), more):
                    yield _sse(obj)
                yield b"data: [DONE]\n\n"
            finally:
                if not task.done():
                    task.cancel()  # the client went away: stop the model calls
                ticket.release(failure)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-request-id": query.request_id})

    async def feedback(self, request: Request) -> Response:
        """POST /v1/feedback {request_id, score in [0, 1] | correct: bool, task?}: an outcome for an earlier answer
        of this tenant (its `x-request-id`). 200 with the plan it judged; 404 unknown/expired id; 400 bad body."""
        try:
            tenant = self._tenant(request)
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object {request_id, score | correct, task?}",
                               code="invalid_json")
            unknown = sorted(set(body) - {"request_id", "score", "correct", "task"})
            if unknown:
                raise ApiError(400, f"unknown fields {unknown}: send request_id, score or correct, and optionally task",
                               param=unknown[0], code="invalid_value")
            loop = getattr(self.core, "feedback", None)
            if loop is None:
                raise ApiError(404, "feedback is off on this router (no policy, or policy.feedback.enabled is false)",
                               code="not_found")
            out = await loop.feedback(body.get("request_id"), tenant, body.get("score"), body.get("correct"),
                                      body.get("task"))
        except ApiError as e:
            return e.response()
        except RoutingError as e:
            err = ApiError.from_routing(e)
            if err.status == 404:
                err.code, err.param = "request_not_found", "request_id"
            return err.response()
        except Exception as e:  # noqa: BLE001
            return ApiError.from_routing(internal_error(e, log, "feedback")).response()
        return JSONResponse({"object": "feedback", "status": "recorded", **out})

    async def list_models(self, request: Request) -> Response:
        try:
            self._tenant(request)
        except ApiError as e:
            return e.response()
        created = int(time.time())
        kinds = {POLICY_MODEL: "policy", **{m: "model" for m in self.config.models}}
        data = [{"id": n, "object": "model", "created": created, "owned_by": "thinkroute",
                 "thinkroute": {"kind": kinds.get(n, "strategy")}} for n in model_names(self.config)]
        return JSONResponse({"object": "list", "data": data})

    async def health(self) -> Response:
        stats = await self.core.pool.stats()
        pools = {s["model"]: {"replicas": s["replicas"], "healthy_replicas": s["healthy_replicas"]} for s in stats}
        serving = any(p["healthy_replicas"] for p in pools.values())
        status = "ok" if all(p["healthy_replicas"] for p in pools.values()) else ("degraded" if serving else "unavailable")
        return JSONResponse({"status": status, "pools": pools}, status_code=200 if serving else 503)


def _parse(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise ApiError(400, f"{param}: {err['msg']}{more}", param=param, code="invalid_value") from e


def build_http_app(frontend: OpenAIFrontend) -> FastAPI:
    """The FastAPI app `RouterIngress` serves on Ray Serve's HTTP proxy (and unit tests serve directly)."""
    app = FastAPI(title="thinkroute OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> Response:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> Response:
        return ApiError(e.status_code, f"{e.detail}: this server answers POST /v1/chat/completions, POST /v1/responses, "
                                       "GET /v1/models, POST /v1/feedback, "
                                       "GET /health", code="not_found").response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> Response:
        return ApiError.from_routing(internal_error(e, log, "HTTP API")).response()

    app.add_api_route("/v1/chat/completions", frontend.chat_completions, methods=["POST"])
    from router.responses_api import ResponsesEndpoint

    app.add_api_route("/v1/responses", ResponsesEndpoint(frontend).create, methods=["POST"])
    app.add_api_route("/v1/models", frontend.list_models, methods=["GET"])
    app.add_api_route("/v1/feedback", frontend.feedback, methods=["POST"])
    app.add_api_route("/health", frontend.health, methods=["GET"])

    async def _metrics() -> Response:
        """Prometheus text format: this router replica's thinkroute_* metrics (router/metrics.py). No credential
        needed: no tenant, key or request content is in it."""
        from router.metrics import CONTENT_TYPE

        return Response(frontend.core.signals.exposition(), media_type=CONTENT_TYPE)

    app.add_api_route("/metrics", _metrics, methods=["GET"])
    from router.learn.serving import http_reload

    async def reload_policy(request: Request) -> Response:  # admin: `thinkroute policy reload` over HTTP
        return await http_reload(frontend, request)

    app.add_api_route("/admin/policy/reload", reload_policy, methods=["POST"])
    return app
