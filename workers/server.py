"""The gRPC worker server: thin servicer over one Engine.

Request life: validate (INVALID_ARGUMENT; every repeated or free-form field has a bound, listed in
workers/limits.py) -> admit (bounded queue, RESOURCE_EXHAUSTED past it; two admission classes:
generation, sized by the engine's concurrency and `max_queue`, and prefill-only RPCs - HiddenState,
Score - sized by `prefill_max_concurrency` and `prefill_max_queue`, so they never take a generation slot)
-> engine call -> map errors to status codes. The standard health service says SERVING once
the engine is up and NOT_SERVING while draining or after the engine died; a dead engine makes
the process exit with code 3 so its supervisor (`thinkroute serve`) restarts it.
Shutdown (SIGTERM/SIGINT) stops admitting, drains in-flight requests for `grace` seconds, exits.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from thinkroute.v1 import worker_pb2 as pb
from thinkroute.v1 import worker_pb2_grpc as pb_grpc

from workers import limits, thinking, wire
from workers.config import EngineConfig
from workers.engine import Engine
from workers.metrics import WorkerMetrics, serve_metrics
from workers.kv.published import engine_kv_namespace, namespace_to_pb
from workers.errors import Draining, EngineDead, InvalidRequest, QueueFull, WorkerError
from workers.prompts import PromptRenderer
from workers.thinking import ThinkingConfig
from workers.types import PromptInput, Sampling

log = logging.getLogger("thinkroute.worker")
SERVICE_NAME = "thinkroute.v1.Worker"
ENGINE_DEAD_EXIT_CODE = 3


class Admission:
    """At most `concurrency` requests run; at most `max_queue` more wait; the rest are refused."""

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self.concurrency, self.max_queue = concurrency, max_queue
        self.running = 0
        self.queued = 0
        self._sem: asyncio.Semaphore | None = None  # created lazily on the serving loop

    @asynccontextmanager
    async def slot(self):
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        if self.running + self.queued >= self.concurrency + self.max_queue:
            raise QueueFull(
                f"worker queue is full ({self.running} running, {self.queued} queued, limit "
                f"{self.concurrency}+{self.max_queue}): retry later or on another replica"
            )
        self.queued += 1
        try:
            await self._sem.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, engine: Engine, renderer: PromptRenderer, cfg: EngineConfig, replica_id: str,
                 health_servicer: health.HealthServicer, thinking_cfg: ThinkingConfig | None = None) -> None:
        self.engine, self.renderer, self.cfg, self.replica_id = engine, renderer, cfg, replica_id
        #: The model's reasoning modes (None = none): registry entry or the engine config's `thinking:`.
        self.thinking_cfg = thinking_cfg
        self.health = health_servicer
        self.admission = Admission(engine.max_concurrency, cfg.max_queue)
        #: Prefill-only RPCs (HiddenState, Score) have their own admission class: they never take a generation
        #: slot (HiddenState runs beside the engine, workers/hidden.py; vLLM queues a Score prefill itself).
        self.prefill_admission = Admission(cfg.prefill_max_concurrency, cfg.prefill_max_queue)
        self.draining = False
        self.requests_total = 0
        self._gen_times: deque[tuple[float, int]] = deque(maxlen=4096)
        self.on_engine_dead = lambda: None
        #: Autoscaling signals: Prometheus /metrics (vLLM's names) and the windowed numbers of `Load`.
        self.metrics = WorkerMetrics(getattr(getattr(engine, "info", None), "model_id", "") or cfg.model,
                                     running=lambda: self.admission.running, waiting=lambda: self.admission.queued,
                                     kv_usage=getattr(engine, "kv_cache_usage", lambda: None))
        #: Port of the Prometheus endpoint (serve_worker sets it when it serves one), reported in Load.
        self.metrics_port = 0
        #: The KV connector's block-hash namespace (workers/kv/published.py), published in Info; None = no connector.
        self.kv_namespace = None

    # -- helpers -------------------------------------------------------------------------------
    def _check_accepting(self) -> None:
        if self.draining:
            raise Draining("worker is shutting down: send the request to another replica")
        if not self.engine.healthy():
            raise EngineDead("the model engine of this worker died; it is restarting: retry on another replica")

    def _prompt_ids(self, prompt: pb.Prompt, template_kwargs: dict[str, bool] | None = None) -> list[int]:
        ids = self.renderer.render(wire.prompt_from_pb(prompt), template_kwargs).token_ids
        ctx = self.engine.info.context_length
        if len(ids) > ctx:
            raise InvalidRequest(f"the prompt has {len(ids)} tokens; this model's context is {ctx} tokens: shorten it")
        return ids

    def _encode(self, text: str) -> list[int]:
        return self.renderer.tokenizer.encode(text, add_special_tokens=False)

    def _validate_sampling(self, s: Sampling, n_prompt: int) -> None:
        ctx = self.engine.info.context_length
        if n_prompt + s.max_tokens > ctx:
            raise InvalidRequest(
                f"prompt ({n_prompt} tokens) + max_tokens ({s.max_tokens}) exceeds the context of {ctx} tokens: "
                f"lower max_tokens to at most {max(ctx - n_prompt, 0)} or shorten the prompt"
            )

    async def _fail(self, context: grpc.aio.ServicerContext, e: Exception) -> None:
        if isinstance(e, WorkerError):
            code = getattr(grpc.StatusCode, e.grpc_code)
        else:
            # The exception text stays in the log; the caller gets only an id to quote.
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s", error_id)
            code = grpc.StatusCode.INTERNAL
            e = WorkerError(f"internal error (id {error_id}; the worker's log has the details)")
        if not self.engine.healthy():
            self._mark_dead()
            code = grpc.StatusCode.UNAVAILABLE
            e = EngineDead(f"the model engine of this worker died ({e}); it is restarting: retry on another replica")
        await context.abort(code, str(e))

    def _mark_dead(self) -> None:
        asyncio.ensure_future(_set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING))
        self.on_engine_dead()

    # -- RPCs ----------------------------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, context):
        try:
            self._check_accepting()
            limits.check_generate(request)
            plan = thinking.resolve(request.thinking, self.thinking_cfg, self.engine.info.model_id,
                                    chat_prompt=request.prompt.WhichOneof("kind") == "chat")
            ids = self._prompt_ids(request.prompt, plan.template_kwargs if plan else None)
            encode = self._encode
            if plan is not None and plan.prompt_suffix:  # thinking off by an immediately closed span
                ids += encode(plan.prompt_suffix)
            sampling = wire.sampling_from_pb(
                request.sampling, request.constraint if request.HasField("constraint") else None)
            if request.cache_salt:  # prefix-cache isolation: travels beside the sampling parameters
                if len(request.cache_salt) > 256:
                    raise InvalidRequest(f"cache_salt is {len(request.cache_salt)} characters; at most 256")
                sampling = dataclasses.replace(sampling, cache_salt=request.cache_salt)
            forcing = plan is not None and plan.mode != "off"
            # Budget forcing adds the span's markers around the generated tokens: they must fit too.
            markers = len(encode(self.thinking_cfg.start + self.thinking_cfg.end + "\n")) if forcing else 0
            self._validate_sampling(sampling, len(ids) + markers)
            # The router's id (`<routed request id>/<n>`, router/request_ids.py) is logged so router and worker
            # logs join; the engine gets it made unique (clients choose request ids, the engine needs distinct ones).
            request_id = f"{request.request_id}#{uuid.uuid4().hex[:8]}" if request.request_id else uuid.uuid4().hex
            log.info("generate request_id=%r prompt_tokens=%d max_tokens=%d", request.request_id, len(ids),
                     sampling.max_tokens)
            self.requests_total += 1
            timer = self.metrics.request()
            async with self.admission.slot():
                if forcing:
                    stream = thinking.generate_with_thinking(
                        plan, self.thinking_cfg, request_id, ids, sampling, generate=self.engine.generate,
                        encode=encode, context_length=self.engine.info.context_length)
                else:
                    stream = self.engine.generate(request_id, ids, sampling)
                try:
                    async for chunk in stream:
                        msg = pb.GenerateResponse(text_delta=chunk.text, token_ids=chunk.token_ids)
                        timer.tokens(len(chunk.token_ids))
                        if chunk.final is not None:
                            msg.final.CopyFrom(wire.final_to_pb(chunk.final))
                            f = chunk.final
                            timer.finish(f.prompt_tokens, f.generated_tokens, f.cached_prompt_tokens,
                                         wire.finish_name(msg.final.finish_reason))
                            self._gen_times.append((time.monotonic(), chunk.final.generated_tokens))
                            log.info("generate done request_id=%r generated_tokens=%d", request.request_id,
                                     chunk.final.generated_tokens)
                        yield msg
                finally:
                    await stream.aclose()  # aborts the engine request if the client went away
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            await self._fail(context, e)

    async def Score(self, request: pb.ScoreRequest, context):
        try:
            self._check_accepting()
            self.engine.refuse("Score")
            limits.check_score(request)
            if len(request.cache_salt) > 256:
                raise InvalidRequest(f"cache_salt is {len(request.cache_salt)} characters; at most 256")
            ids = self._prompt_ids(request.prompt)
            which = request.WhichOneof("continuation")
            if which == "continuation_text":
                cont = self.renderer.tokenizer.encode(request.continuation_text, add_special_tokens=False)
            elif which == "continuation_ids":
                cont = list(request.continuation_ids.ids)
            else:
                cont = []
            vocab = self.renderer.vocab_size
            bad = [t for t in [*cont, *request.candidate_ids] if not 0 <= t < vocab]
            if bad:
                raise InvalidRequest(f"token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
            if len(ids) + len(cont) > self.engine.info.context_length:
                raise InvalidRequest("prompt + continuation exceed the model's context length")
            async with self.prefill_admission.slot():
                r = await self.engine.score(ids, cont, request.top_k, list(request.candidate_ids),
                                            cache_salt=request.cache_salt)
            return pb.ScoreResponse(
                continuation=wire.logprobs_to_pb(r.continuation), top_next=wire.logprobs_to_pb(r.top_next),
                candidates=wire.logprobs_to_pb(r.candidates), prompt_tokens=r.prompt_tokens,
                cached_prompt_tokens=r.cached_prompt_tokens,
            )
        except Exception as e:  # noqa: BLE001
            await self._fail(context, e)

    async def HiddenState(self, request: pb.HiddenStateRequest, context):
        try:
            self._check_accepting()
            self.engine.refuse("HiddenState")
            limits.check_hidden_state(request)
            limits.check_layers_range(request.layers, self.engine.info.num_layers)
            if request.max_tokens < 0:
                raise InvalidRequest(f"max_tokens must be >= 0 (0 = the whole prompt), got {request.max_tokens}")
            prompts = [self._prompt_ids(p) for p in request.prompts]
            poolings = [wire.pooling_from_pb(p) for p in request.poolings] or wire.pooling_from_pb(request.pooling)
            async with self.prefill_admission.slot():
                results = await self.engine.hidden_states(prompts, list(request.layers), poolings,
                                                          request.uncertainty, request.max_tokens)
            return pb.HiddenStateResponse(
                model_id=self.engine.info.model_id,
                results=[pb.HiddenStateResult(
                    data=np.ascontiguousarray(r.states, dtype="<f4").tobytes(), shape=list(r.states.shape),
                    layers=r.layers, prompt_tokens=r.prompt_tokens,
                    uncertainty=[] if r.uncertainty is None else [float(x) for x in r.uncertainty]) for r in results],
            )
        except Exception as e:  # noqa: BLE001
            await self._fail(context, e)

    async def Tokenize(self, request: pb.TokenizeRequest, context):
        try:
            limits.check_prompt(request.prompt)
            rendered = self.renderer.render(wire.prompt_from_pb(request.prompt))
            return pb.TokenizeResponse(token_ids=rendered.token_ids, rendered_text=rendered.text)
        except Exception as e:  # noqa: BLE001
            await self._fail(context, e)

    async def Info(self, request, context):
        i = self.engine.info
        return pb.InfoResponse(
            model_id=i.model_id, tokenizer_id=i.tokenizer_id, context_length=i.context_length, backend=i.backend,
            device=i.device, dtype=i.dtype, has_chat_template=i.has_chat_template, vocab_size=i.vocab_size,
            hidden_size=i.hidden_size, num_layers=i.num_layers, max_concurrency=self.admission.concurrency,
            max_queue=self.admission.max_queue, replica_id=self.replica_id,
            kv_namespace=namespace_to_pb(self.kv_namespace, pb),
        )

    async def Load(self, request, context):
        now = time.monotonic()
        recent = sum(n for t, n in self._gen_times if now - t <= 60.0)
        return pb.LoadResponse(
            running=self.admission.running, queued=self.admission.queued,
            max_concurrency=self.admission.concurrency, max_queue=self.admission.max_queue,
            generated_tokens_per_s=recent / 60.0, requests_total=self.requests_total,
            **_window_fields(self.metrics.window()), metrics_port=self.metrics_port,
        )


def _window_fields(w) -> dict:
    """LoadResponse's autoscaling fields from a workers.metrics.Window."""
    out = dict(prompt_tokens_per_s=w.prompt_tokens_per_s, ttft_p50_ms=w.ttft_p50_ms, ttft_p95_ms=w.ttft_p95_ms,
               itl_p50_ms=w.itl_p50_ms, itl_p95_ms=w.itl_p95_ms, prefix_cache_hit_rate=w.prefix_cache_hit_rate)
    if w.kv_cache_usage is not None:
        out["kv_cache_usage"] = w.kv_cache_usage
    return out


def _progress(msg: str) -> None:
    print(f"[worker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def server_credentials(cert_file: str, key_file: str) -> grpc.ServerCredentials:
    """TLS server credentials from PEM files (certificate chain, private key); ValueError naming a bad file."""
    pems = []
    for what, path in (("certificate", cert_file), ("private key", key_file)):
        try:
            pems.append(open(path, "rb").read())
        except OSError as e:
            raise ValueError(f"worker TLS {what} file {path!r} cannot be read: {e.strerror}") from None
    return grpc.ssl_server_credentials([(pems[1], pems[0])])


async def serve_worker(cfg: EngineConfig, host: str = "127.0.0.1", port: int = 0, grace_s: float = 30.0,
                       replica_id: str | None = None, ready_file: str | None = None,
                       tls_cert_file: str | None = None, tls_key_file: str | None = None,
                       registration: "RegistrationConfig | None" = None, metrics_port: int | None = None) -> int:
    """Load the engine, serve until SIGTERM/SIGINT (drain, then exit 0) or engine death (exit 3).

    `port=0` picks a free port; the bound address is printed as `READY host:port` on stdout and,
    when `ready_file` is given, written there (how `thinkroute serve` and the tests find it).
    With `tls_cert_file` and `tls_key_file` (PEM) the port serves TLS only.
    With `metrics_port` (0 = a free one) Prometheus `GET /metrics` is served on host:metrics_port
    (workers/metrics.py: vLLM's metric names), reported in `Load.metrics_port`.
    With `registration` the worker registers itself in Redis once serving and heartbeats until it drains
    (workers/registration.py); a failing first registration stops it (exit 2 through WorkerError).
    """
    creds = server_credentials(tls_cert_file, tls_key_file) if tls_cert_file and tls_key_file else None
    from transformers import AutoTokenizer

    from workers.backends import make_engine
    from workers.convert import materialize
    from workers.models import resolve_model, thinking_config

    spec = resolve_model(cfg.model)
    model_dir = materialize(spec, _progress)
    engine = make_engine(cfg, _progress)
    await engine.start(_progress)
    renderer = PromptRenderer(AutoTokenizer.from_pretrained(model_dir), chat=spec.chat, prepend_bos=spec.prepend_bos)

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        # NOTE: router clients ping idle channels (router/worker_client.py CHANNEL_OPTIONS) to notice a dead
        # worker fast; with gRPC's default policy the server would answer those pings with GOAWAY
        # "too_many_pings" after ~30 s idle and fail the next call with UNAVAILABLE.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
    servicer = WorkerServicer(engine, renderer, cfg, replica_id, health_servicer, thinking_config(spec, cfg.thinking))
    servicer.kv_namespace = engine_kv_namespace(engine)
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = (server.add_secure_port(f"{host}:{port}", creds) if creds is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise RuntimeError(f"could not bind {host}:{port}: is the port in use?")
    await server.start()
    metrics_server = None
    if metrics_port is not None:  # Prometheus GET /metrics beside the gRPC port (workers/metrics.py)
        metrics_server, servicer.metrics_port = serve_metrics(servicer.metrics, host, metrics_port)
        _progress(f"Prometheus metrics on http://{host}:{servicer.metrics_port}/metrics")
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{bound}"
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(address)
        os.replace(tmp, ready_file)
    registrar = None
    if registration is not None:
        registrar = await _register(registration, spec.name, replica_id, address, servicer.admission.concurrency, server)
    print(f"READY {address}", flush=True)
    _progress(f"{spec.name} ({cfg.backend}) serving on {address}")

    stop = asyncio.Event()
    exit_code = 0

    def engine_died() -> None:
        nonlocal exit_code
        exit_code = ENGINE_DEAD_EXIT_CODE
        stop.set()

    servicer.on_engine_dead = engine_died
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if registrar is not None:
        await registrar.stop()  # leave the registry first: routers stop sending before we refuse
    servicer.draining = True
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    _progress(f"draining (up to {grace_s:.0f} s for {servicer.admission.running + servicer.admission.queued} requests)")
    await server.stop(grace_s if exit_code == 0 else 1.0)
    if metrics_server is not None:
        metrics_server.shutdown()
    await engine.shutdown()
    _progress("stopped")
    return exit_code


async def _register(rc: "RegistrationConfig", model: str, replica_id: str, bound: str, capacity: int, server):
    """Register this worker (workers/registration.py); on failure stop the server and raise WorkerError."""
    from workers.registration import Registrar, Registration, advertised_address

    reg = Registration(pool=rc.pool or model, model_id=model, address=rc.advertise or advertised_address(bound),
                       replica_id=replica_id, capacity=capacity, heartbeat_s=rc.heartbeat_s)
    registrar = Registrar(rc, reg)
    try:
        await registrar.start()
    except Exception as e:  # noqa: BLE001 - a worker that should register but cannot would never get traffic
        await server.stop(0)
        raise WorkerError(f"could not register in the worker registry {rc.url} ({type(e).__name__}: {e}); "
                          f"check the URL and ${rc.password_env}") from e
    _progress(f"registered as {reg.address} in pool {reg.pool} (heartbeat {rc.heartbeat_s:g} s, expiry {rc.ttl_s} s)")
    return registrar


async def _set_health(h, status) -> None:
    for name in ("", SERVICE_NAME):
        r = h.set(name, status)
        if asyncio.iscoroutine(r):
            await r
