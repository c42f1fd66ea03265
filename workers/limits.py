"""Bounds on every repeated or free-form field of the worker protocol (thinkroute.v1.Worker).

The worker checks these before it tokenizes or queues anything, so one request can never make it
allocate, tokenize or loop without bound. A request past a bound gets INVALID_ARGUMENT naming the
field, the bound and the value (`InvalidRequest`). The bounds are static (independent of the
model); model-dependent checks (context length, vocabulary, layer range) follow in the server.

| field | bound |
|---|---|
| `request_id` | <= 128 characters |
| `cache_salt` | <= MAX_CACHE_SALT_CHARS characters |
| `prompt.text` | <= MAX_PROMPT_CHARS characters |
| `prompt.token_ids.ids` | <= MAX_PROMPT_TOKEN_IDS ids |
| `prompt.chat.messages` | 1 .. MAX_MESSAGES messages; all contents together <= MAX_PROMPT_CHARS characters |
| `prompt.chat.messages[i].role` | <= 16 characters (and one of the valid roles, checked by the renderer) |
| `sampling.max_tokens` | 1 .. MAX_TOKENS (and prompt + max_tokens <= the model's context) |
| `sampling.temperature` | finite, 0 .. MAX_TEMPERATURE |
| `sampling.top_p` | finite, 0 .. 1 (0 means 1) |
| `sampling.stop` | <= MAX_STOP strings, each 1 .. MAX_STOP_CHARS characters |
| `constraint.json_schema`, `constraint.grammar` | <= MAX_CONSTRAINT_CHARS characters |
| `constraint.regex` | <= MAX_REGEX_CHARS characters |
| `constraint.choice.choices` | 1 .. MAX_CHOICES strings, each 1 .. MAX_CHOICE_CHARS characters |
| `ScoreRequest.continuation_text` | <= MAX_PROMPT_CHARS characters |
| `ScoreRequest.continuation_ids.ids` | <= MAX_PROMPT_TOKEN_IDS ids |
| `ScoreRequest.top_k` | 0 .. MAX_TOP_K |
| `ScoreRequest.candidate_ids` | <= MAX_CANDIDATE_IDS ids |
| `HiddenStateRequest.prompts` | 1 .. MAX_HIDDEN_STATE_PROMPTS prompts |
| `HiddenStateRequest.layers` | <= MAX_LAYERS entries, each in -(L+1) .. L for a model of L layers |
| `HiddenStateRequest.pooling`, `.poolings` | each a defined Pooling value; <= MAX_POOLINGS entries |
| `HiddenStateRequest.max_tokens` | 0 .. MAX_PROMPT_TOKEN_IDS |
"""
from __future__ import annotations

import math

from thinkroute.v1 import worker_pb2 as pb

from workers.errors import InvalidRequest

MAX_REQUEST_ID_CHARS = 128
MAX_PROMPT_CHARS = 256 * 1024
MAX_PROMPT_TOKEN_IDS = 128 * 1024
MAX_MESSAGES = 256
MAX_ROLE_CHARS = 16
MAX_TOKENS = 32 * 1024
MAX_TEMPERATURE = 100.0
MAX_STOP = 32
MAX_STOP_CHARS = 256
MAX_TOP_K = 100
MAX_CANDIDATE_IDS = 256
MAX_HIDDEN_STATE_PROMPTS = 64
MAX_LAYERS = 64
MAX_POOLINGS = 4
MAX_CACHE_SALT_CHARS = 256
MAX_CONSTRAINT_CHARS = 64 * 1024
MAX_REGEX_CHARS = 4 * 1024
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
POOLINGS = tuple(pb.Pooling.values())


def _at_most(field: str, n: int, bound: int, unit: str) -> None:
    if n > bound:
        raise InvalidRequest(f"{field} has {n} {unit}; at most {bound} are allowed: send fewer")


def check_request_id(request_id: str) -> None:
    _at_most("request_id", len(request_id), MAX_REQUEST_ID_CHARS, "characters")


def check_prompt(p: pb.Prompt, field: str = "prompt") -> None:
    """Size bounds of one Prompt (emptiness and roles are the renderer's checks)."""
    kind = p.WhichOneof("kind")
    if kind == "text":
        _at_most(f"{field}.text", len(p.text), MAX_PROMPT_CHARS, "characters")
    elif kind == "token_ids":
        _at_most(f"{field}.token_ids.ids", len(p.token_ids.ids), MAX_PROMPT_TOKEN_IDS, "ids")
    elif kind == "chat":
        messages = p.chat.messages
        _at_most(f"{field}.chat.messages", len(messages), MAX_MESSAGES, "messages")
        total = 0
        for i, m in enumerate(messages):
            _at_most(f"{field}.chat.messages[{i}].role", len(m.role), MAX_ROLE_CHARS, "characters")
            total += len(m.content)
        _at_most(f"{field}.chat.messages[*].content (all messages together)", total, MAX_PROMPT_CHARS, "characters")


def check_sampling(s: pb.SamplingParams) -> None:
    """Range and size bounds of SamplingParams (the context-length check needs the prompt; see the server)."""
    if not 0 < s.max_tokens <= MAX_TOKENS:
        raise InvalidRequest(f"sampling.max_tokens must be in [1, {MAX_TOKENS}] (got {s.max_tokens}), and the prompt "
                             "plus max_tokens must fit the model's context")
    if not math.isfinite(s.temperature) or not 0 <= s.temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(f"sampling.temperature must be in [0, {MAX_TEMPERATURE:g}] (got {s.temperature})")
    if not math.isfinite(s.top_p) or not 0 <= s.top_p <= 1:
        raise InvalidRequest(f"sampling.top_p must be in [0, 1] (0 = 1.0; got {s.top_p})")
    _at_most("sampling.stop", len(s.stop), MAX_STOP, "strings")
    for i, x in enumerate(s.stop):
        if not x:
            raise InvalidRequest(f"sampling.stop[{i}] is an empty string: remove it")
        _at_most(f"sampling.stop[{i}]", len(x), MAX_STOP_CHARS, "characters")


def check_constraint(c) -> None:
    """Size bounds of GenerateRequest.constraint (its meaning is checked where it is compiled)."""
    kind = c.WhichOneof("kind")
    if kind in ("json_schema", "grammar"):
        _at_most(f"constraint.{kind}", len(getattr(c, kind)), MAX_CONSTRAINT_CHARS, "characters")
    elif kind == "regex":
        _at_most("constraint.regex", len(c.regex), MAX_REGEX_CHARS, "characters")
    elif kind == "choice":
        choices = c.choice.choices
        if not choices:
            raise InvalidRequest("constraint.choice.choices is empty: list at least one string")
        _at_most("constraint.choice.choices", len(choices), MAX_CHOICES, "strings")
        for i, x in enumerate(choices):
            if not x:
                raise InvalidRequest(f"constraint.choice.choices[{i}] is an empty string: remove it")
            _at_most(f"constraint.choice.choices[{i}]", len(x), MAX_CHOICE_CHARS, "characters")


def check_generate(r: pb.GenerateRequest) -> None:
    check_request_id(r.request_id)
    _at_most("cache_salt", len(getattr(r, "cache_salt", "")), MAX_CACHE_SALT_CHARS, "characters")
    check_prompt(r.prompt)
    check_sampling(r.sampling)
    if r.HasField("constraint"):
        check_constraint(r.constraint)


def check_score(r: pb.ScoreRequest) -> None:
    check_prompt(r.prompt)
    which = r.WhichOneof("continuation")
    if which == "continuation_text":
        _at_most("continuation_text", len(r.continuation_text), MAX_PROMPT_CHARS, "characters")
    elif which == "continuation_ids":
        _at_most("continuation_ids.ids", len(r.continuation_ids.ids), MAX_PROMPT_TOKEN_IDS, "ids")
    if not 0 <= r.top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be in [0, {MAX_TOP_K}] (got {r.top_k})")
    _at_most("candidate_ids", len(r.candidate_ids), MAX_CANDIDATE_IDS, "ids")


def check_hidden_state(r: pb.HiddenStateRequest) -> None:
    if not r.prompts:
        raise InvalidRequest("prompts is empty: HiddenState needs at least one prompt")
    _at_most("prompts", len(r.prompts), MAX_HIDDEN_STATE_PROMPTS, "prompts")
    for i, p in enumerate(r.prompts):
        check_prompt(p, f"prompts[{i}]")
    _at_most("layers", len(r.layers), MAX_LAYERS, "entries")
    if r.pooling not in POOLINGS:
        raise InvalidRequest(f"pooling is {r.pooling}; valid values are {dict(pb.Pooling.items())}")
    _at_most("poolings", len(r.poolings), MAX_POOLINGS, "entries")
    for i, p in enumerate(r.poolings):
        if p not in POOLINGS:
            raise InvalidRequest(f"poolings[{i}] is {p}; valid values are {dict(pb.Pooling.items())}")
    if not 0 <= r.max_tokens <= MAX_PROMPT_TOKEN_IDS:
        raise InvalidRequest(f"max_tokens must be in [0, {MAX_PROMPT_TOKEN_IDS}] (0 = the whole prompt; "
                             f"got {r.max_tokens})")


def check_layers_range(layers, num_layers: int) -> None:
    """Layer indices against the model: 0 = embeddings .. num_layers; negative counts from the end."""
    bad = [x for x in layers if not -(num_layers + 1) <= x <= num_layers]
    if bad:
        raise InvalidRequest(f"layers {bad[:5]} are out of range for a model with {num_layers} layers: "
                             f"valid are {-(num_layers + 1)} .. {num_layers}")
