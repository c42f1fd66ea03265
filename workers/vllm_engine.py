"""`vllm` backend: the production engine, on vLLM's asynchronous engine (`AsyncLLM`).

What it does, per call of the `Engine` contract (workers/engine.py):

- `generate`: one `AsyncLLM.generate` stream per request, prompt passed as token ids
  (`TokensPrompt`) so this backend and `hf` see identical ids. vLLM streams text deltas
  (`RequestOutputKind.DELTA`) and already holds back text that could still become a stop
  string and cuts the stop string out of the text (`include_stop_str_in_output=False`),
  which is the contract. `cached_prompt_tokens` is vLLM's `num_cached_tokens` (whole blocks:
  128 tokens on CPU; local prefix cache and KV-connector hits together, since `RequestOutput`
  does not split them, so `remote_cached_prompt_tokens` stays 0). Closing the iterator early (client cancelled, deadline passed)
  calls `AsyncLLM.abort(request_id)` at once: the request leaves the scheduler at its next
  step and its KV blocks are freed. `sampling.constraint` (JSON schema, regex, choice list,
  grammar) becomes `SamplingParams.structured_outputs` (vLLM's structured outputs, xgrammar
  backend, falling back to guidance for schema features xgrammar lacks); a constraint vLLM
  cannot compile is INVALID_ARGUMENT. CPU engines run on the V1 model runner because of
  vLLM issue 51283 (`pin_cpu_model_runner`).
- `score`: one prefill of prompt+continuation with `max_tokens=1` (greedy):
  `prompt_logprobs=0` gives each continuation token's log-prob (exact: the log-softmax
  of the raw logits, `logprobs_mode="raw_logprobs"`), `logprobs=top_k` gives the top-k
  next-token distribution. Candidates found in that top-k are read from it; the others
  come from a second 1-token request with `logprob_token_ids=[...]`, which returns the
  exact log-prob of any listed id (at most 128 per request, so longer lists are split).
  That second request hits the prefix cache for every full block of the first, so it
  recomputes less than one block (measured: see docs/bench/engine.md). The alternatives
  are worse: raising `max_logprobs` to the vocabulary size materialises 49k-262k Python
  `Logprob` objects per call, and one prompt_logprobs pass per candidate costs a prefill each.
- `hidden_states`: served by transformers modules on the same safetensors directory, in this
  worker process (workers/hidden.py): only the embeddings and the decoder layers up to the
  deepest layer asked for are loaded and run (the final norm and LM head only for the final
  layer or the uncertainty columns), and concurrent calls share micro-batched forwards on their
  own thread. Loaded on first use, or at start for `cfg.hidden_state_warm_layers`. vLLM's generate
  runner does not expose hidden states; its pooling runner would, but it needs a second engine
  (its own process, weights and KV cache) and always runs every layer.
- `healthy()`: false once vLLM raised `EngineDeadError` (the engine-core process died) or
  reports itself errored; the server then answers NOT_SERVING / UNAVAILABLE and restarts.

Configuration (from `EngineConfig`):
- `VLLM_CPU_KVCACHE_SPACE` (GiB) is set from `cfg.kv_cache_gib` in `os.environ` before the
  engine core is spawned (the spawned process reads it at start). vLLM parses it as an int,
  so fractional sizes round up to whole GiB.
- `enable_prefix_caching=True`, `enforce_eager`, `max_num_seqs`, `max_model_len`, `dtype`,
  `max_logprobs=128`, `kv_transfer_config` from `cfg.kv_connector` when given.
- NOTE(vllm-cpu 0.32.0): a request with a `seed` whose prompt is prefilled in chunks kills
  the engine core (`EngineDeadError`, root cause "CPU Generator does not use offset"). One
  user's seeded request must not take the worker down, so on CPU chunked prefill is off and
  `max_num_batched_tokens >= max_model_len`: every prompt is prefilled in one step.
  tests/integration/test_vllm_engine.py checks a seeded long prompt. The workaround is CPU-only:
  on CUDA chunked prefill stays on with vLLM's own token budget (a long prompt then does not stall
  the running decodes, which matters for inter-token latency); the Redis KV connector saves the
  blocks completed by every prefill chunk (tests/integration/test_redis_kv_chunked.py).
- NOTE(gemma3): Gemma 3 without `<bos>` writes degenerate text. `PromptRenderer` prepends it
  for text and chat prompts; raw token-id prompts are used as given there, so this engine
  prepends `<bos>` when a `prepend_bos` model gets ids that do not start with it (one int
  compare per request).

The engine core runs in a spawned process (vLLM's multiprocessing client): entry points that
build this engine need an `if __name__ == "__main__":` guard.

On GPU the CUDA path is a configuration difference only (the `vllm` package instead of
`vllm-cpu`, `cfg.device="cuda"`, `gpu_memory_utilization` instead of
`VLLM_CPU_KVCACHE_SPACE`, usually bfloat16 and CUDA graphs); it is not exercised here.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

from workers.config import EngineConfig
from workers.engine import Engine
from workers.errors import EngineDead, InvalidRequest, WorkerError
from workers.models import ModelSpec
from workers.types import (
    Constraint,
    EngineInfo,
    FinishReason,
    GenerateChunk,
    GenerateFinal,
    HiddenStateResult,
    Pooling,
    Sampling,
    ScoreResult,
    TokenLogprob,
)

if TYPE_CHECKING:
    from workers.hidden import HiddenStateBatcher

log = logging.getLogger(__name__)

#: Upper bound on `top_k` in Score (vLLM's `max_logprobs`); SpecReason needs 10 digits, the API 20.
MAX_TOP_K = 128
#: vLLM's per-request limit on `logprob_token_ids` (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS).
MAX_CANDIDATES_PER_REQUEST = 128

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


class VllmEngine(Engine):
    """One model on vLLM's AsyncLLM. Call `start()` on the event loop that will serve requests."""

    def __init__(self, spec: ModelSpec, model_dir: Path, cfg: EngineConfig) -> None:
        self.spec, self.model_dir, self.cfg = spec, Path(model_dir), cfg
        self.max_concurrency = cfg.max_num_seqs
        self._llm = None
        self._tokenizer = None
        self._bos_id: int | None = None
        self._dead: BaseException | None = None
        self._hidden: HiddenStateBatcher | None = None  # created lazily on the serving loop
        self._warned_bos = False
        #: Seconds `start()` took (engine core spawn + weights + KV cache allocation).
        self.start_seconds = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def engine_args(self):
        """The `AsyncEngineArgs` this engine starts with (exposed for tests and the benchmark)."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        cfg = self.cfg
        kv_transfer = None
        if cfg.kv_connector:
            from vllm.config import KVTransferConfig

            kv_transfer = KVTransferConfig(**cfg.kv_connector)
        device_args = {}
        if cfg.device == "cuda":
            device_args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # NOTE(vllm-cpu 0.32.0): seeded + chunked prefill kills the engine; see module docstring.
            # Tokens per engine step: >= max_model_len so any prompt prefills in one step; at least
            # 2048 so several short prompts can prefill together.
            device_args.update(enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.max_model_len, 2048))
        return AsyncEngineArgs(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            served_model_name=self.spec.name,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            max_num_seqs=cfg.max_num_seqs,
            enable_prefix_caching=True,
            max_logprobs=MAX_TOP_K,
            logprobs_mode="raw_logprobs",
            kv_transfer_config=kv_transfer,
            disable_log_stats=True,
            **device_args,
        )

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        say = progress or (lambda m: None)
        if self.cfg.device == "cpu":
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = _gib_str(self.cfg.kv_cache_gib)
            # NOTE(vllm-cpu 0.32.0, vLLM issue 51283): see `pin_cpu_model_runner`.
            pin_cpu_model_runner()
        from vllm.v1.engine.async_llm import AsyncLLM

        t0 = time.monotonic()
        say(f"{self.spec.name}: starting vLLM engine ({self.cfg.dtype}, {self.cfg.device}, "
            f"max_model_len={self.cfg.max_model_len}, kv_cache={self.cfg.kv_cache_gib} GiB)")
        args = self.engine_args()
        # Building the engine spawns the engine-core process and waits for it (tens of seconds):
        # do it in a thread so the event loop (health checks) stays live.
        # The stat logger keeps the scheduler's KV-cache usage for workers/metrics.py (vLLM then collects stats;
        # no default logger is added because disable_log_stats stays True).
        self._kv_usage: float | None = None
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args,
                                            stat_loggers=[functools.partial(_KvUsageLogger, self)])
        self._tokenizer = self._llm.get_tokenizer()
        self._bos_id = self._tokenizer.bos_token_id if self.spec.prepend_bos else None
        mc = self._llm.model_config
        text_cfg = getattr(mc.hf_config, "text_config", mc.hf_config)
        self.info = EngineInfo(
            model_id=self.spec.name,
            tokenizer_id=_tokenizer_id(self._tokenizer),
            context_length=int(mc.max_model_len),
            backend="vllm",
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            has_chat_template=bool(getattr(self._tokenizer, "chat_template", None)) and self.spec.chat,
            vocab_size=len(self._tokenizer),
            hidden_size=int(text_cfg.hidden_size),
            num_layers=int(text_cfg.num_hidden_layers),
        )
        self.start_seconds = time.monotonic() - t0
        say(f"{self.spec.name}: vLLM engine ready in {self.start_seconds:.1f} s")
        if self.cfg.hidden_state_warm_layers or self.cfg.hidden_state_warm_uncertainty:
            from workers.hf_engine import resolve_layers

            resolved = resolve_layers(list(self.cfg.hidden_state_warm_layers), self.info.num_layers)
            secs = await self.hidden_batcher().warm(resolved, self.cfg.hidden_state_warm_uncertainty)
            say(f"{self.spec.name}: hidden states warm for layers {resolved}"
                f"{' + uncertainty' if self.cfg.hidden_state_warm_uncertainty else ''} in {secs:.1f} s "
                f"({len(self._hidden.model.base.layers)} of {self.info.num_layers} decoder layers loaded)")

    def healthy(self) -> bool:
        return self._llm is not None and self._dead is None and not self._llm.errored

    def kv_cache_usage(self) -> float | None:
        """The scheduler's last reported KV-cache usage, [0, 1] (None before the first engine step)."""
        return getattr(self, "_kv_usage", None)

    def num_unfinished_requests(self) -> int:
        """Requests the engine holds now (running or waiting in its scheduler)."""
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    async def shutdown(self) -> None:
        if self._hidden is not None:
            await self._hidden.close()
            self._hidden = None
        if self._llm is not None:
            llm, self._llm = self._llm, None
            # Stop reading outputs first, so the engine core going away is not logged as a failure.
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()
            await asyncio.to_thread(llm.shutdown)

    # -- generate ------------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerateChunk]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        ids = self._check_prompt(prompt_ids)
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature if not sampling.greedy else 0.0,
            top_p=sampling.top_p if 0 < sampling.top_p <= 1 else 1.0,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=False,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured_outputs(sampling.constraint),
        )
        t0 = time.perf_counter()
        ttft_ms = 0.0
        generated = 0
        cached = 0
        finished = False
        stream = self._llm_generate(ids, params, request_id, cache_salt=sampling.cache_salt)
        try:
            async for out in stream:
                comp = out.outputs[0]
                if comp.token_ids and generated == 0:
                    ttft_ms = (time.perf_counter() - t0) * 1e3
                generated += len(comp.token_ids)
                if out.num_cached_tokens is not None:
                    cached = out.num_cached_tokens
                final = None
                if out.finished:
                    finished = True
                    final = GenerateFinal(
                        finish_reason=_FINISH.get(comp.finish_reason or "abort", FinishReason.ABORT),
                        prompt_tokens=len(ids),
                        generated_tokens=generated,
                        cached_prompt_tokens=cached,
                        # The Redis KV connector (workers/kv) reports its share of the cached tokens here.
                        remote_cached_prompt_tokens=int((out.kv_transfer_params or {}).get(
                            "remote_cached_prompt_tokens", 0)),
                        stop_string=comp.stop_reason if isinstance(comp.stop_reason, str) else "",
                        time_to_first_token_ms=ttft_ms,
                        total_time_ms=(time.perf_counter() - t0) * 1e3,
                    )
                if comp.text or comp.token_ids or final is not None:
                    yield GenerateChunk(text=comp.text, token_ids=list(comp.token_ids), final=final)
                if finished:
                    return
        finally:
            if not finished and self._llm is not None and self.healthy():
                # Client cancelled / deadline passed / error: free the slot now, not at GC time.
                await self._llm.abort(request_id)
            await stream.aclose()

    async def _llm_generate(self, ids: list[int], params, request_id: str, cache_salt: str = ""):
        """`AsyncLLM.generate` with vLLM's errors mapped onto the worker's hierarchy."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if not self.healthy():
            cause = repr(self._dead) if self._dead is not None else "its engine-core process exited"
            raise EngineDead(f"{self.spec.name}: the vLLM engine has stopped ({cause}); the worker must restart")
        try:
            async with contextlib.aclosing(self._llm.generate(_tokens_prompt(TokensPrompt, ids, cache_salt), params, request_id)) as outs:
                async for out in outs:
                    yield out
        except EngineDeadError as e:
            self._dead = e
            raise EngineDead(f"{self.spec.name}: the vLLM engine process died; the worker must restart") from e
        except VLLMClientError as e:
            raise InvalidRequest(f"{self.spec.name}: vLLM rejected the request: {e}") from e
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            if self._llm is not None and self._llm.errored:
                self._dead = e
                raise EngineDead(f"{self.spec.name}: the vLLM engine failed ({e}); the worker must restart") from e
            raise WorkerError(f"{self.spec.name}: generation failed: {e}") from e

    async def _run_once(self, ids: list[int], params, cache_salt: str = "") -> object:
        """Run one non-streaming request to completion and return its last RequestOutput."""
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        request_id = f"score-{uuid.uuid4().hex}"
        last = None
        stream = self._llm_generate(ids, params, request_id, cache_salt=cache_salt)
        try:
            async for out in stream:
                last = out
        finally:
            if last is None or not last.finished:
                if self._llm is not None and self.healthy():
                    await self._llm.abort(request_id)
            await stream.aclose()
        return last

    # -- score ---------------------------------------------------------------------------------
    async def score(
        self, prompt_ids: list[int], continuation_ids: list[int], top_k: int, candidate_ids: list[int],
        cache_salt: str = "",
    ) -> ScoreResult:
        from vllm.sampling_params import SamplingParams

        if not 0 <= top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k is {top_k}; the vllm backend serves 0..{MAX_TOP_K}")
        vocab = self.info.vocab_size
        bad = [t for t in [*continuation_ids, *candidate_ids] if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        prompt = self._check_prompt(prompt_ids)
        ids = prompt + list(continuation_ids)
        n = len(prompt)
        first = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0 if continuation_ids else None,
            logprobs=top_k if top_k > 0 else None,
            logprob_token_ids=list(dict.fromkeys(candidate_ids))[:MAX_CANDIDATES_PER_REQUEST]
            if top_k == 0 and candidate_ids else None,
            detokenize=False,
        )
        out = await self._run_once(ids, first, cache_salt)
        decode = self._token_text
        cont = []
        if continuation_ids:
            rows = out.prompt_logprobs  # rows[i] = logprob of ids[i] given ids[:i]; rows[0] is None
            for i, t in enumerate(continuation_ids):
                cont.append(TokenLogprob(t, decode(t), float(rows[n + i][t].logprob)))
        next_lp: dict[int, float] = {t: float(lp.logprob) for t, lp in (out.outputs[0].logprobs or [{}])[0].items()}
        top = []
        if top_k > 0:
            best = sorted(next_lp.items(), key=lambda kv: -kv[1])[:top_k]
            top = [TokenLogprob(t, decode(t), v) for t, v in best]
        known = dict(next_lp)
        missing = [t for t in dict.fromkeys(candidate_ids) if t not in known]
        if missing:
            chunks = [missing[i:i + MAX_CANDIDATES_PER_REQUEST] for i in range(0, len(missing), MAX_CANDIDATES_PER_REQUEST)]
            outs = await asyncio.gather(*(
                self._run_once(ids, SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunk, detokenize=False),
                               cache_salt)
                for chunk in chunks
            ))
            for o in outs:
                known.update({t: float(lp.logprob) for t, lp in o.outputs[0].logprobs[0].items()})
        cands = [TokenLogprob(t, decode(t), known[t]) for t in candidate_ids]
        return ScoreResult(
            continuation=cont, top_next=top, candidates=cands,
            prompt_tokens=len(ids), cached_prompt_tokens=int(out.num_cached_tokens or 0),
        )

    # -- hidden states -------------------------------------------------------------------------
    async def hidden_states(self, prompts: list[list[int]], layers: list[int], pooling: "Pooling | Sequence[Pooling]",
                            uncertainty: bool = False, max_tokens: int = 0) -> list[HiddenStateResult]:
        from workers.hf_engine import resolve_layers, truncate_prompt

        poolings = [pooling] if isinstance(pooling, Pooling) else list(pooling)
        resolved = resolve_layers(list(layers), self.info.num_layers)
        # As the hf backend: the last `max_tokens` tokens, then <bos> for models that need it.
        ids = [self._check_prompt(truncate_prompt(p, max_tokens)) for p in prompts]
        return await self.hidden_batcher().submit(ids, resolved, [p.value for p in poolings], uncertainty)

    def hidden_batcher(self) -> "HiddenStateBatcher":
        """The truncated, micro-batched hidden-state model (workers/hidden.py); built on first use (the
        weights load on its first forward, in its thread). Call on the serving event loop."""
        if self._hidden is None:
            from workers.hidden import HiddenStateBatcher, TruncatedModel

            model = TruncatedModel(self.model_dir, self.info.num_layers, self.cfg.dtype, self.cfg.device)
            self._hidden = HiddenStateBatcher(model, window_ms=self.cfg.hidden_state_batch_window_ms)
        return self._hidden

    # -- helpers -------------------------------------------------------------------------------
    def _check_prompt(self, prompt_ids: list[int]) -> list[int]:
        ids = list(prompt_ids)
        if not ids:
            raise InvalidRequest("the prompt is empty: send at least one token id")
        if self._bos_id is not None and ids[0] != self._bos_id:
            if not self._warned_bos:
                log.warning("%s: prompt ids do not start with <bos> (id %d); prepending it (the model needs it)",
                            self.spec.name, self._bos_id)
                self._warned_bos = True
            ids.insert(0, self._bos_id)
        return ids

    def _token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])


#: Bounds on a structured-output constraint (characters of schema/regex/grammar text; choice entries).
MAX_CONSTRAINT_CHARS = 64 * 1024
MAX_CHOICES = 256


def pin_cpu_model_runner() -> None:
    """Run CPU engines on vLLM's V1 model runner.

    vLLM picks its model runner from `VLLM_USE_V2_MODEL_RUNNER` (read by
    `VllmConfig.use_v2_model_runner`); unset, it picks V2 whenever a usable Triton is installed.
    The Triton installed here has no CPU backend, so vLLM falls back to V1 by itself today; a Triton
    build with a CPU backend would silently switch it to V2. The V2 CPU runner applies grammar bitmasks through the CUDA-only `StructuredOutputsWorker`
    (CUDA streams, pinned memory, a Triton kernel): the first constrained request kills the engine
    core for every request in the batch (vLLM issue 51283). The V1 CPU runner applies them with
    xgrammar's CPU kernel. The variable is set before the engine core is spawned, which inherits it.
    """
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"


def structured_outputs(constraint: Constraint | None):
    """vLLM's `StructuredOutputsParams` for a constraint (None for free text). Raises InvalidRequest
    for a constraint past the size bounds or one that is not well formed (e.g. a schema that is not JSON)."""
    if constraint is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    try:
        kind = constraint.kind()
    except ValueError as e:
        raise InvalidRequest(f"constraint: {e}") from e
    if kind == "choice":
        choices = list(constraint.choice or ())
        if not choices or len(choices) > MAX_CHOICES or any(not c or len(c) > 1024 for c in choices):
            raise InvalidRequest(f"constraint.choice needs 1..{MAX_CHOICES} non-empty strings of at most 1024 "
                                 f"characters; got {len(choices)}")
        return StructuredOutputsParams(choice=choices)
    text = getattr(constraint, kind) or ""
    if not text.strip() or len(text) > MAX_CONSTRAINT_CHARS:
        raise InvalidRequest(f"constraint.{kind} must be 1..{MAX_CONSTRAINT_CHARS} characters; got {len(text)}")
    if kind == "json_schema":
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"constraint.json_schema is not valid JSON: {e}") from e
        if not isinstance(schema, dict):
            raise InvalidRequest("constraint.json_schema must be a JSON object (a JSON schema)")
        return StructuredOutputsParams(json=schema)
    return StructuredOutputsParams(**{kind: text})


def _gib_str(gib: float) -> str:
    """vLLM parses VLLM_CPU_KVCACHE_SPACE with int(): whole GiB, rounded up, at least 1."""
    return str(max(1, math.ceil(gib)))


def _tokenizer_id(tokenizer) -> str:
    from workers.hf_engine import _tokenizer_id as hf_tokenizer_id

    return hf_tokenizer_id(tokenizer)


def _tokens_prompt(cls, ids: list[int], cache_salt: str):
    """vLLM's TokensPrompt; with a `cache_salt` (the tenant's), its prefix cache and the Redis KV
    connector share blocks only with requests of the same salt."""
    return cls(prompt_token_ids=ids, cache_salt=cache_salt) if cache_salt else cls(prompt_token_ids=ids)


class _KvUsageLogger:
    """A vLLM per-engine stat logger (duck-typed `StatLoggerBase`: vLLM calls the factory with
    (vllm_config, engine_index) and then these methods) that keeps the scheduler's KV-cache usage on the engine.

    Called by AsyncLLM's output handler on the serving loop after engine steps; O(1)."""

    def __init__(self, engine: "VllmEngine", vllm_config=None, engine_index: int = 0) -> None:
        self.engine = engine

    def record(self, scheduler_stats=None, iteration_stats=None, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self.engine._kv_usage = float(scheduler_stats.kv_cache_usage)

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass

