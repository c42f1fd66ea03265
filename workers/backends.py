"""Backend registry: engine config name -> `Engine` class, and `make_engine(cfg)`.

Adding a backend means one class implementing `workers.engine.Engine` and one entry in
`BACKENDS`. Backend modules are imported lazily: `hf` pulls in transformers, `vllm` pulls
in vLLM (hundreds of MB, and a spawned engine-core process once started).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from workers.config import EngineConfig
from workers.engine import Engine
from workers.errors import InvalidRequest
from workers.models import ModelSpec, resolve_model

#: Backend name (the `backend` field of EngineConfig, the CLI's --backend choices) -> "module:Class".
BACKENDS: dict[str, str] = {
    "hf": "workers.hf_engine:HfEngine",
    "vllm": "workers.vllm_engine:VllmEngine",
    "replay": "workers.replay_engine:ReplayEngine",
}


def engine_class(backend: str) -> type[Engine]:
    """The Engine class registered under `backend`; InvalidRequest names the valid choices."""
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise InvalidRequest(f"invalid backend {backend!r}: available backends are {sorted(BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def make_engine(
    cfg: EngineConfig,
    progress: Callable[[str], None] | None = None,
    *,
    spec: ModelSpec | None = None,
    model_dir: Path | None = None,
) -> Engine:
    """Resolve `cfg.model`, materialize its safetensors directory (converting a GGUF once,
    cached, blocking while another process converts it) and build the engine (not started:
    the caller awaits `engine.start()` on its serving loop)."""
    from workers.convert import materialize

    cls = engine_class(cfg.backend)
    spec = spec or resolve_model(cfg.model)
    model_dir = model_dir or materialize(spec, progress)
    return cls(spec, model_dir, cfg)
