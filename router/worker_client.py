"""`WorkerClient`: gRPC to one worker replica (thinkroute.v1.Worker), on grpc.aio.

Converts between `workers.types` and protobuf, applies per-call deadlines, and raises
`grpc.aio.AioRpcError` unchanged (the pool decides about retries and error mapping).
The channel is created lazily on the event loop that first uses it (grpc.aio objects are
loop-bound). With `WorkerTls` (config `tls.worker_ca_file`) the channel is TLS, verifying the
worker's certificate against that CA.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from thinkroute.v1 import worker_pb2 as pb
from thinkroute.v1 import worker_pb2_grpc as pb_grpc

from router.types import ModelInfo
from workers import wire
from workers.types import PromptInput, Sampling

SERVICE_NAME = "thinkroute.v1.Worker"

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Fail fast on a dead worker instead of backing off for up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True)
class WorkerTls:
    """TLS to the workers: the CA bundle (PEM bytes) that signs their certificates, and the name to verify
    when it is not the host of the worker's address."""

    ca_pem: bytes
    server_name: str | None = None

    @classmethod
    def from_files(cls, ca_file: str | None, server_name: str | None = None) -> "WorkerTls | None":
        """None when `ca_file` is None (plaintext); raises ValueError naming a missing or empty file."""
        if not ca_file:
            return None
        try:
            pem = Path(ca_file).read_bytes()
        except OSError as e:
            raise ValueError(f"tls.worker_ca_file {ca_file!r} cannot be read: {e.strerror}") from None
        if b"BEGIN CERTIFICATE" not in pem:
            raise ValueError(f"tls.worker_ca_file {ca_file!r} holds no PEM certificate")
        return cls(pem, server_name)


class WorkerClient:
    def __init__(self, address: str, tls: WorkerTls | None = None) -> None:
        self.address = address
        self.tls = tls
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.WorkerStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stub(self) -> pb_grpc.WorkerStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            else:
                options = list(CHANNEL_OPTIONS)
                if self.tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self.tls.server_name))
                creds = grpc.ssl_channel_credentials(root_certificates=self.tls.ca_pem)
                self._channel = grpc.aio.secure_channel(self.address, creds, options=options)
            self._stub = pb_grpc.WorkerStub(self._channel)
            self._loop = loop
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    def generate(self, prompt: PromptInput, sampling: Sampling, *, timeout: float,
                 request_id: str = "") -> AsyncIterator[pb.GenerateResponse]:
        """The server stream; cancelling/closing it cancels the RPC (the worker aborts the request).
        `request_id` (router/request_ids.py) is logged by the worker, so router and worker logs join."""
        req = pb.GenerateRequest(request_id=request_id, prompt=wire.prompt_to_pb(prompt),
                                 sampling=wire.sampling_to_pb(sampling))
        if sampling.constraint is not None:  # structured output travels beside the sampling parameters
            req.constraint.CopyFrom(wire.constraint_to_pb(sampling.constraint))
        if sampling.cache_salt:  # so does the tenant's prefix-cache salt
            req.cache_salt = sampling.cache_salt
        if sampling.thinking:  # and the reasoning mode (workers/thinking.py)
            req.thinking = sampling.thinking
        return self.stub.Generate(req, timeout=timeout)

    async def score(self, prompt: PromptInput, *, continuation_ids: list[int] | None, continuation_text: str | None,
                    top_k: int, candidate_ids: list[int], timeout: float, cache_salt: str = "") -> pb.ScoreResponse:
        req = pb.ScoreRequest(prompt=wire.prompt_to_pb(prompt), top_k=top_k, candidate_ids=candidate_ids,
                              cache_salt=cache_salt)
        if continuation_ids is not None:
            req.continuation_ids.CopyFrom(pb.TokenIds(ids=continuation_ids))
        elif continuation_text is not None:
            req.continuation_text = continuation_text
        return await self.stub.Score(req, timeout=timeout)

    async def hidden_states(self, prompts: list[PromptInput], layers: list[int], mean_pool: bool,
                            timeout: float) -> list[np.ndarray]:
        req = pb.HiddenStateRequest(prompts=[wire.prompt_to_pb(p) for p in prompts], layers=layers,
                                    pooling=pb.POOLING_MEAN if mean_pool else pb.POOLING_LAST_TOKEN)
        resp = await self.stub.HiddenState(req, timeout=timeout)
        return [np.frombuffer(r.data, dtype="<f4").reshape(tuple(r.shape)) for r in resp.results]

    async def hidden_features(self, prompts: list[PromptInput], layers: list[int], pooling: list[str], uncertainty: bool,
                              max_tokens: int, timeout: float) -> tuple[list[np.ndarray], str]:
        """One HiddenState call returning every column of a feature spec (probes.features.feature_request):
        per prompt the flat row [layer-major pooled states, then uncertainty], and the worker's model_id."""
        wire_pool = {"last": pb.POOLING_LAST_TOKEN, "mean": pb.POOLING_MEAN}
        req = pb.HiddenStateRequest(prompts=[wire.prompt_to_pb(p) for p in prompts], layers=layers,
                                    poolings=[wire_pool[p] for p in pooling], uncertainty=uncertainty, max_tokens=max_tokens)
        resp = await self.stub.HiddenState(req, timeout=timeout)
        rows = []
        for r in resp.results:
            v = np.frombuffer(r.data, dtype="<f4").reshape(-1)
            rows.append(np.concatenate([v, np.asarray(r.uncertainty, np.float32)]) if uncertainty else v.copy())
        return rows, resp.model_id

    async def tokenize(self, prompt: PromptInput, timeout: float) -> list[int]:
        resp = await self.stub.Tokenize(pb.TokenizeRequest(prompt=wire.prompt_to_pb(prompt)), timeout=timeout)
        return list(resp.token_ids)

    async def info(self, timeout: float = 10.0) -> pb.InfoResponse:
        return await self.stub.Info(pb.InfoRequest(), timeout=timeout)

    async def load(self, timeout: float = 2.0) -> pb.LoadResponse:
        return await self.stub.Load(pb.LoadRequest(), timeout=timeout)

    async def health(self, timeout: float = 2.0) -> int:
        """grpc.health.v1 Check of the Worker service on this channel: the ServingStatus (1 = SERVING).
        Raises grpc.aio.AioRpcError (DEADLINE_EXCEEDED for a worker that does not answer in `timeout`)."""
        self.stub  # noqa: B018 - makes the channel on this loop
        resp = await health_pb2_grpc.HealthStub(self._channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
        return int(resp.status)


def model_info(model: str, resp: pb.InfoResponse) -> ModelInfo:
    return ModelInfo(model=model, tokenizer_id=resp.tokenizer_id, context_length=resp.context_length,
                     has_chat_template=resp.has_chat_template, backend=resp.backend, device=resp.device)
