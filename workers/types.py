"""Plain data types of the worker contract, independent of protobuf and of any backend.

The gRPC server converts `thinkroute.v1` messages to these and back; engines only
ever see these. Token ids are plain Python ints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class PromptInput:
    """Exactly one of `text`, `token_ids`, `messages` is set (checked by `validate`)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def kind(self) -> str:
        set_fields = [n for n in ("text", "token_ids", "messages") if getattr(self, n) is not None]
        if len(set_fields) != 1:
            raise ValueError(f"a prompt needs exactly one of text, token_ids, messages; got {set_fields or 'none'}")
        return set_fields[0]


@dataclass(frozen=True)
class Constraint:
    """A structured-output constraint on generated text: exactly one field is set (checked by `kind`).

    - `json_schema`: a JSON schema, as JSON text; the output is one JSON value valid for it.
    - `regex`: the whole output matches this regular expression.
    - `choice`: the output is exactly one of these strings.
    - `grammar`: the output is derived from this grammar (EBNF/GBNF as xgrammar reads it, root rule `root`).
    """

    json_schema: str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def kind(self) -> str:
        set_fields = [n for n in ("json_schema", "regex", "choice", "grammar") if getattr(self, n) is not None]
        if len(set_fields) != 1:
            raise ValueError(f"a constraint needs exactly one of json_schema, regex, choice, grammar; "
                             f"got {set_fields or 'none'}")
        return set_fields[0]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: Structured output the engine must enforce (None = free text).
    constraint: Constraint | None = None
    #: Prefix-cache isolation (vLLM `cache_salt`): prefixes are shared only between equal salts; "" = shared cache.
    cache_salt: str = ""
    #: Reasoning mode (workers/thinking.py): off | on | budget=<N> | effort=<level>; "" = the model's default.
    thinking: str = ""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class FinishReason(str, Enum):
    STOP = "stop"        # EOS or a stop string
    LENGTH = "length"    # max_tokens reached
    ABORT = "abort"      # cancelled by the client or the server


@dataclass
class GenerateFinal:
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int = 0
    remote_cached_prompt_tokens: int = 0
    #: Of generated_tokens, those inside the thinking span (counted by the worker's budget forcing).
    thinking_tokens: int = 0
    stop_string: str = ""
    time_to_first_token_ms: float = 0.0
    total_time_ms: float = 0.0


@dataclass
class GenerateChunk:
    """One streamed piece. `final` is set on the last chunk only (its text may be empty)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    final: GenerateFinal | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class ScoreResult:
    continuation: list[TokenLogprob]
    top_next: list[TokenLogprob]
    candidates: list[TokenLogprob]
    prompt_tokens: int
    cached_prompt_tokens: int = 0


class Pooling(str, Enum):
    LAST_TOKEN = "last_token"
    MEAN = "mean"


@dataclass
class HiddenStateResult:
    states: np.ndarray            # float32 [len(layers) * len(poolings), hidden_size], layer-major
    layers: list[int]             # resolved (non-negative) layer indices; num_layers = final (after norm)
    prompt_tokens: int
    #: [entropy, top-1 probability, log(prompt tokens)] at the last prompt token, when asked for.
    uncertainty: np.ndarray | None = None


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    tokenizer_id: str
    context_length: int
    backend: str
    device: str
    dtype: str
    has_chat_template: bool
    vocab_size: int
    hidden_size: int
    num_layers: int
