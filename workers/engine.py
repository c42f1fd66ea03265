"""The `Engine` interface: one loaded model behind the worker contract.

Backends (`hf` on transformers, `vllm` on vLLM's async engine) implement this ABC;
the gRPC server (`workers/server.py`) is the only caller. Engines receive prompts
already rendered and tokenized by `workers.prompts.PromptRenderer` (so both
backends see identical token ids, BOS included) and already validated against the
context length. Engines are asyncio objects: every coroutine runs on the server's
event loop and must not block it (run model code in a thread or a separate process).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import AsyncIterator, Callable, Sequence

from workers.types import EngineInfo, GenerateChunk, HiddenStateResult, Pooling, Sampling, ScoreResult


class Engine(ABC):
    """A model backend. Lifecycle: `await start()` once, serve calls, `await shutdown()` once."""

    #: Set by `start()`.
    info: EngineInfo

    #: Requests the engine runs at once; the server queues the rest (bounded).
    max_concurrency: int = 1

    @abstractmethod
    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Load the model; report human-readable progress lines through `progress`."""

    @abstractmethod
    def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerateChunk]:
        """Stream the continuation of `prompt_ids`.

        Contract: text deltas concatenate to the full completion; a stop string ends
        generation and is not part of the text; the last chunk carries `final`.
        Closing the iterator early (client cancelled, deadline passed) must abort the
        request in the engine at once and free its slot.

        `sampling.constraint` (structured output: JSON schema, regex, choice list, grammar), when
        set, must either be enforced on every generated token or refused with `InvalidRequest`
        naming the backend and the constraint kind; it is never silently ignored.
        """

    @abstractmethod
    async def score(
        self,
        prompt_ids: list[int],
        continuation_ids: list[int],
        top_k: int,
        candidate_ids: list[int],
        cache_salt: str = "",
    ) -> ScoreResult:
        """Prefill only. Log-probs of each continuation token given everything before it, and
        the next-token distribution after prompt+continuation: its top_k and the given candidates.
        `cache_salt` isolates the prefix cache like `Sampling.cache_salt` (backends without one ignore it)."""

    @abstractmethod
    async def hidden_states(
        self, prompts: list[list[int]], layers: list[int], pooling: "Pooling | Sequence[Pooling]",
        uncertainty: bool = False, max_tokens: int = 0,
    ) -> list[HiddenStateResult]:
        """Prefill only. Per prompt (its last `max_tokens` tokens when > 0), the hidden state of each
        requested layer (0 = embeddings, num_layers = final layer after the final norm, negative = from
        the end) under each pooling (last prompt token or mean over prompt tokens), layer-major, as
        float32; with `uncertainty`, also [entropy, top-1 prob, log tokens] of the next-token
        distribution (see workers.hf_engine.hidden_features, the one definition)."""

    def refuse(self, rpc: str) -> None:
        """Raise a WorkerError when this engine does not serve `rpc` ("Score", "HiddenState"), before the server
        validates the request against the model; the default serves every RPC."""

    def healthy(self) -> bool:
        """False once the engine can no longer serve (the server then reports NOT_SERVING)."""
        return True

    def kv_cache_usage(self) -> float | None:
        """Fraction [0, 1] of the engine's KV cache in use now (workers/metrics.py), or None when the backend
        does not report it. Called from the metrics exporter's thread: read a cached number, never block."""
        return None

    async def shutdown(self) -> None:
        """Release the model. In-flight requests have been drained by the server already."""
