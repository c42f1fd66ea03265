"""The `replay` backend: a worker that answers from a recorded outcome file instead of a model.

The practice of llm-d's inference simulator and Dynamo's mocker engine: the rest of the stack (router,
pool, strategies, traces, ingresses) runs for real while the model is stood in for by what a real system
once answered. A replay worker serves one system of one outcome file (`replay.file`, `replay.system`;
the model name is `<system>@replay`):

- Matching. The router renders prompts per the model registry; a replay model renders plain text (no chat
  template), so one user message arrives as `Question: {text}\\nAnswer:` and a conversation as
  `System: ...\\n\\nUser: ...\\n\\nAssistant:` blocks (workers/prompts.py). The engine decodes the prompt's
  token ids, takes the text of the last user turn (or the whole prompt when it has no such form), collapses
  every run of whitespace to one space and strips it (`query_key`), and looks that up among the file's prompt
  texts normalised the same way. No record: NOT_FOUND (gRPC), naming the system and the file, not the prompt.
- Answer. The system's recorded `solution`. A record without one (the reasoning file: per plan only
  `is_correct`, `grade`, `output_tokens`, `reasoning_tokens`) answers the row's gold `answer` when it is
  correct, "I don't know." when its grade is `not_attempted`, else "(recorded answer: incorrect)".
- Token counts. SmolLM2-135M's tokenizer (the embedded drafter's, shipped locally): prompt tokens are the
  rendered prompt's, generated tokens the answer's, and the streamed token ids are real ids of that
  tokenizer. When the record carries `output_tokens` (thinking included) the final counts report that
  number instead (and `reasoning_tokens` as thinking tokens): the unseen thinking tokens are paced before
  the first visible token. `max_tokens` cuts the answer (finish `length`); stop strings end it (`stop`).
- Timing. The first token after `ttft_ms`, then one token every 1/`tokens_per_s` seconds on an absolute
  schedule (no drift); `tokens_per_s: 0` streams without pacing. One chunk per token.
- Other RPCs. Tokenize and Info work (Info: model id `<system>@replay`, backend `replay`, no layers);
  Score and HiddenState answer UNIMPLEMENTED (a replay model has no weights: point probes at a real drafter).
  Sampling parameters are ignored (the recorded answer is the answer); structured-output constraints are
  refused with INVALID_ARGUMENT.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

from workers.config import EngineConfig, ReplayConfig
from workers.engine import Engine
from workers.errors import InvalidRequest, UnknownModel, WorkerError
from workers.models import REPLAY_SUFFIX, ModelSpec
from workers.stops import StopMatcher
from workers.types import (
    EngineInfo,
    FinishReason,
    GenerateChunk,
    GenerateFinal,
    HiddenStateResult,
    Pooling,
    Sampling,
    ScoreResult,
)

REPO = Path(__file__).resolve().parents[1]
#: Prompt text fields tried in this order when `replay.text_field` is empty.
TEXT_FIELDS = ("question", "prompt", "query")
#: Outcome files larger than this are refused (the whole file is held in memory).
MAX_FILE_BYTES = 256 << 20


class NoRecord(WorkerError, LookupError):
    """The replay file holds no answer for this prompt."""

    grpc_code = "NOT_FOUND"


class NotServed(WorkerError):
    """An RPC the replay backend cannot serve (it has no model weights)."""

    grpc_code = "UNIMPLEMENTED"


@dataclass(frozen=True)
class Record:
    """One recorded answer: the text to stream and, when recorded, the token counts to report."""

    text: str
    is_correct: bool
    #: Recorded generated tokens (thinking included); None = count `text` with the tokenizer.
    output_tokens: int | None = None
    #: Recorded thinking tokens, when known.
    reasoning_tokens: int = 0


_WS = re.compile(r"\s+")
_QA = re.compile(r"\AQuestion: (?P<q>.*)\nAnswer:\Z", re.S)
_TURN = re.compile(r"(?:\A|\n\n)(?P<role>System|User|Assistant|Tool):(?: |\Z)", re.S)


def query_key(text: str) -> str:
    """The matching key of a prompt text: whitespace runs collapsed to one space, ends stripped."""
    return _WS.sub(" ", text).strip()


def user_text(rendered: str) -> str:
    """The user's text in a plain-text rendering (workers/prompts.py): the question of `Question: ...\\nAnswer:`,
    else the content of the last `User:` turn of a conversation, else the whole text."""
    m = _QA.match(rendered)
    if m:
        return m.group("q")
    turns = list(_TURN.finditer(rendered))
    users = [i for i, t in enumerate(turns) if t.group("role") == "User"]
    if not users:
        return rendered
    i = users[-1]
    end = turns[i + 1].start() if i + 1 < len(turns) else len(rendered)
    return rendered[turns[i].end():end]


def resolve_path(path: str) -> Path:
    """`path` as given when it exists, else relative to the repository root; UnknownModel naming both."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (REPO / p).exists():
        return REPO / p
    raise UnknownModel(f"replay file {path!r} not found (relative paths resolve against the working directory, then {REPO})")


def load_records(cfg: ReplayConfig, system: str) -> tuple[dict[str, Record], str]:
    """Read the outcome file: {query_key(prompt text): Record of `system`} and the text field used.

    Raises UnknownModel naming the systems the file has when `system` is not one of them."""
    path = resolve_path(cfg.file)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidRequest(f"replay file {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
    records: dict[str, Record] = {}
    field = cfg.text_field
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidRequest(f"replay file {path} line {n} is not JSON: {e}") from None
            if not field:
                field = next((k for k in TEXT_FIELDS if isinstance(row.get(k), str)), "")
                if not field:
                    raise InvalidRequest(f"replay file {path}: no text field among {list(TEXT_FIELDS)} "
                                         f"(fields: {sorted(row)}); set replay.text_field")
            if not isinstance(row.get(field), str):
                raise InvalidRequest(f"replay file {path} line {n} has no text field {field!r}")
            rec = row.get(system)
            if not isinstance(rec, dict) or "is_correct" not in rec:
                systems = sorted(k for k, v in row.items() if isinstance(v, dict) and "is_correct" in v)
                raise UnknownModel(f"system {system!r} is not in replay file {path} (line {n}); it has {systems}")
            records.setdefault(query_key(row[field]), _record(rec, row))
    if not records:
        raise InvalidRequest(f"replay file {path} holds no rows")
    return records, field


def _record(rec: dict, row: dict) -> Record:
    text = rec.get("solution")
    if not isinstance(text, str):
        if rec.get("is_correct") and isinstance(row.get("answer"), str):
            text = row["answer"]
        elif rec.get("grade") == "not_attempted":
            text = "I don't know."
        else:
            text = "(recorded answer: incorrect)"
    out = rec.get("output_tokens")
    return Record(text=text, is_correct=bool(rec.get("is_correct")),
                  output_tokens=int(out) if isinstance(out, (int, float)) else None,
                  reasoning_tokens=int(rec.get("reasoning_tokens") or 0))


@functools.lru_cache(maxsize=2)
def _load_tokenizer(model_dir: str):
    """SmolLM2-135M's tokenizer, loaded once per process (engines in one process share it: read-only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


class ReplayEngine(Engine):
    """Streams recorded answers with configured timing. Many requests at once (`max_num_seqs`): it only sleeps."""

    def __init__(self, spec: ModelSpec, model_dir: Path, cfg: EngineConfig) -> None:
        if cfg.replay is None:
            raise InvalidRequest("backend replay needs a `replay:` block in the engine config")
        self.spec, self.model_dir, self.cfg, self.replay = spec, Path(model_dir), cfg, cfg.replay
        name = spec.name
        self.system = self.replay.system or (name[: -len(REPLAY_SUFFIX)] if name.endswith(REPLAY_SUFFIX) else name)
        self.max_concurrency = cfg.max_num_seqs
        self.records: dict[str, Record] = {}
        self.tokenizer = None

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        await asyncio.to_thread(self.load_sync, progress)

    def load_sync(self, progress: Callable[[str], None] | None = None) -> None:
        from workers.hf_engine import _tokenizer_id

        say = progress or (lambda m: None)
        self.tokenizer = _load_tokenizer(str(self.model_dir))
        self.records, field = load_records(self.replay, self.system)
        self.info = EngineInfo(
            model_id=self.spec.name, tokenizer_id=_tokenizer_id(self.tokenizer), context_length=self.cfg.max_model_len,
            backend="replay", device="cpu", dtype="none", has_chat_template=False, vocab_size=len(self.tokenizer),
            hidden_size=0, num_layers=0,
        )
        rate = f"{self.replay.tokens_per_s:g} tokens/s" if self.replay.tokens_per_s else "unpaced"
        say(f"{self.spec.name}: replaying {len(self.records)} answers of {self.system!r} from {self.replay.file} "
            f"(prompt field {field!r}; {rate}, TTFT {self.replay.ttft_ms:g} ms)")

    def lookup(self, prompt_ids: list[int]) -> Record:
        """The record answering this rendered prompt; NoRecord when there is none."""
        rendered = self.tokenizer.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for candidate in (user_text(rendered), rendered):
            rec = self.records.get(query_key(candidate))
            if rec is not None:
                return rec
        digest = hashlib.sha256(query_key(user_text(rendered)).encode()).hexdigest()[:12]
        raise NoRecord(f"no recorded answer of {self.system!r} for this prompt (user text sha256 {digest}...) in "
                       f"{self.replay.file} ({len(self.records)} prompts): the replay model answers only the file's prompts")

    def pieces(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids of `text` and the text piece of each (pieces concatenate to `text`)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        pieces, prev = [], 0
        for i, (_, end) in enumerate(offsets):
            end = len(text) if i == len(offsets) - 1 else max(end, prev)
            pieces.append(text[prev:end])
            prev = end
        return ids, pieces

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerateChunk]:
        if sampling.constraint is not None:
            raise InvalidRequest(f"the replay backend cannot enforce structured outputs (constraint "
                                 f"{sampling.constraint.kind()!r}): it streams a recorded answer; drop the constraint")
        t0 = time.monotonic()
        rec = self.lookup(prompt_ids)
        ids, pieces = self.pieces(rec.text)
        visible = len(ids)
        reported = rec.output_tokens if rec.output_tokens is not None else visible
        hidden = max(0, reported - visible)  # recorded tokens never shown (thinking): paced before the answer
        finish = FinishReason.STOP
        if reported > sampling.max_tokens:
            finish = FinishReason.LENGTH
            keep = max(0, sampling.max_tokens - hidden)
            ids, pieces, visible = ids[:keep], pieces[:keep], keep
            hidden = min(hidden, sampling.max_tokens)
            reported = sampling.max_tokens
        rate = self.replay.tokens_per_s
        step = 1.0 / rate if rate > 0 else 0.0
        first_at = t0 + self.replay.ttft_ms / 1e3 + hidden * step
        matcher = StopMatcher(sampling.stop)
        text, ttft_ms, sent = "", 0.0, 0
        for i, (tid, piece) in enumerate(zip(ids, pieces)):
            delay = first_at + i * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == 0:
                ttft_ms = (time.monotonic() - t0) * 1e3
            text += piece
            sent = i + 1
            delta, stopped = matcher.feed(text)
            yield GenerateChunk(text=delta, token_ids=[tid])
            if stopped:
                finish = FinishReason.STOP
                reported = hidden + sent
                break
        else:
            if not ids:  # nothing visible: wait out the TTFT (and any paced thinking) all the same
                delay = first_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                ttft_ms = (time.monotonic() - t0) * 1e3
        tail = "" if matcher.stopped_on else matcher.flush(text)
        thinking = min(rec.reasoning_tokens, reported)
        yield GenerateChunk(text=tail, final=GenerateFinal(
            finish_reason=finish, prompt_tokens=len(prompt_ids), generated_tokens=reported, thinking_tokens=thinking,
            stop_string=matcher.stopped_on, time_to_first_token_ms=ttft_ms, total_time_ms=(time.monotonic() - t0) * 1e3))

    async def score(self, prompt_ids: list[int], continuation_ids: list[int], top_k: int,
                    candidate_ids: list[int], cache_salt: str = "") -> ScoreResult:
        raise NotServed(self._not_served("Score"))

    async def hidden_states(self, prompts: list[list[int]], layers: list[int], pooling: "Pooling | Sequence[Pooling]",
                            uncertainty: bool = False, max_tokens: int = 0) -> list[HiddenStateResult]:
        raise NotServed(self._not_served("HiddenState"))

    def refuse(self, rpc: str) -> None:
        """Score and HiddenState are not served: raise before the server validates their arguments."""
        if rpc in ("Score", "HiddenState"):
            raise NotServed(self._not_served(rpc))

    def _not_served(self, rpc: str) -> str:
        return (f"{rpc} is not served by replay model {self.spec.name!r}: it replays recorded answers and has no "
                f"weights; send {rpc} to a worker running a real model (e.g. the drafter)")
