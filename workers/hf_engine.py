"""`hf` backend: the transformers reference implementation of the worker contract.

One request runs at a time (a token-by-token loop with a KV cache, in a thread so the
event loop stays free); the server queues the rest. Greedy output equals transformers'
own `generate(do_sample=False)`. It also serves `HiddenState` for the `vllm` backend
(same weights, same process), because vLLM's generate runner does not expose hidden states.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import numpy as np

from workers.config import EngineConfig
from workers.engine import Engine
from workers.errors import InvalidRequest
from workers.models import ModelSpec
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
    TokenLogprob,
)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class HfEngine(Engine):
    max_concurrency = 1

    def __init__(self, spec: ModelSpec, model_dir: Path, cfg: EngineConfig) -> None:
        self.spec, self.model_dir, self.cfg = spec, Path(model_dir), cfg
        self._lock = threading.Lock()       # one forward pass at a time
        self.model = None
        self.tokenizer = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        await asyncio.to_thread(self.load_sync, progress)

    def load_sync(self, progress: Callable[[str], None] | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        say = progress or (lambda m: None)
        t0 = time.monotonic()
        say(f"{self.spec.name}: loading weights (hf, {self.cfg.dtype}, {self.cfg.device})")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        dtype = getattr(torch, _DTYPES[self.cfg.dtype])
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.cfg.device).eval()
        config = self.model.config
        text_cfg = getattr(config, "text_config", config)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.info = EngineInfo(
            model_id=self.spec.name,
            tokenizer_id=_tokenizer_id(self.tokenizer),
            context_length=min(self.cfg.max_model_len, int(getattr(text_cfg, "max_position_embeddings", 1 << 30))),
            backend="hf",
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)) and self.spec.chat,
            vocab_size=len(self.tokenizer),
            hidden_size=int(text_cfg.hidden_size),
            num_layers=int(text_cfg.num_hidden_layers),
        )
        say(f"{self.spec.name}: loaded in {time.monotonic() - t0:.1f} s")

    # -- generate ------------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[GenerateChunk]:
        if sampling.constraint is not None:
            # The reference backend has no constrained decoding: refuse rather than ignore the constraint.
            raise InvalidRequest(
                f"the hf backend does not enforce structured outputs (constraint {sampling.constraint.kind()!r}); "
                "send the request to a worker on the vllm backend, or drop the constraint")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        loop.run_in_executor(None, self._generate_sync, prompt_ids, sampling, cancel, put)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.final is not None:
                    break
        finally:
            # Client gone, deadline passed or done: the loop stops before its next token and
            # releases the model lock; nothing else to wait for here.
            cancel.set()

    def _with_bos(self, ids: list[int]) -> list[int]:
        """Same guard as the vllm backend: a `prepend_bos` model (Gemma 3) always sees <bos> first."""
        bos = self.tokenizer.bos_token_id
        if self.spec.prepend_bos and bos is not None and (not ids or ids[0] != bos):
            return [bos, *ids]
        return list(ids)

    def _generate_sync(self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event, put) -> None:
        import torch

        prompt_ids = self._with_bos(prompt_ids)

        try:
            with self._lock, torch.inference_mode():
                t0 = time.perf_counter()
                gen = None
                if not sampling.greedy and sampling.seed is not None:
                    gen = torch.Generator(device=self.cfg.device).manual_seed(int(sampling.seed))
                matcher = StopMatcher(sampling.stop)
                ids = torch.tensor([prompt_ids], device=self.cfg.device)
                past, out_ids, ttft = None, [], 0.0
                finish = FinishReason.LENGTH
                pending_ids: list[int] = []
                for _ in range(sampling.max_tokens):
                    if cancel.is_set():
                        finish = FinishReason.ABORT
                        break
                    out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits = out.logits[0, -1].float()
                    token = _sample(logits, sampling, gen)
                    if not out_ids:
                        ttft = (time.perf_counter() - t0) * 1e3
                    out_ids.append(token)
                    pending_ids.append(token)
                    if token in self.eos_ids:
                        out_ids.pop()
                        pending_ids.pop()
                        finish = FinishReason.STOP
                        break
                    text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                    delta, stopped = matcher.feed(text)
                    if delta or stopped:
                        put(GenerateChunk(text=delta, token_ids=pending_ids))
                        pending_ids = []
                    if stopped:
                        finish = FinishReason.STOP
                        break
                    ids = torch.tensor([[token]], device=self.cfg.device)
                tail = ""
                if not matcher.stopped_on:
                    tail = matcher.flush(self.tokenizer.decode(out_ids, skip_special_tokens=True))
                generated = len(out_ids) + (1 if finish == FinishReason.STOP and not matcher.stopped_on else 0)
                put(GenerateChunk(
                    text=tail,
                    token_ids=pending_ids,
                    final=GenerateFinal(
                        finish_reason=finish,
                        stop_string=matcher.stopped_on,
                        prompt_tokens=len(prompt_ids),
                        generated_tokens=generated,
                        time_to_first_token_ms=ttft,
                        total_time_ms=(time.perf_counter() - t0) * 1e3,
                    ),
                ))
        except BaseException as e:  # surfaced to the awaiting coroutine
            put(e)

    # -- score ---------------------------------------------------------------------------------
    async def score(self, prompt_ids: list[int], continuation_ids: list[int], top_k: int,
                    candidate_ids: list[int], cache_salt: str = "") -> ScoreResult:  # no prefix cache: salt unused
        return await asyncio.to_thread(self.score_sync, prompt_ids, continuation_ids, top_k, candidate_ids)

    def score_sync(self, prompt_ids, continuation_ids, top_k, candidate_ids) -> ScoreResult:
        import torch

        prompt_ids = self._with_bos(prompt_ids)
        ids = list(prompt_ids) + list(continuation_ids)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.cfg.device)).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
        n = len(prompt_ids)
        cont = [
            TokenLogprob(t, self.tokenizer.decode([t]), float(logprobs[n - 1 + i, t]))
            for i, t in enumerate(continuation_ids)
        ]
        last = logprobs[-1]
        top = []
        if top_k > 0:
            vals, idx = torch.topk(last, min(top_k, last.shape[0]))
            top = [TokenLogprob(int(i), self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(vals, idx)]
        cands = [TokenLogprob(int(t), self.tokenizer.decode([int(t)]), float(last[int(t)])) for t in candidate_ids]
        return ScoreResult(continuation=cont, top_next=top, candidates=cands, prompt_tokens=n)

    # -- hidden states -------------------------------------------------------------------------
    async def hidden_states(self, prompts: list[list[int]], layers: list[int], pooling: "Pooling | Sequence[Pooling]",
                            uncertainty: bool = False, max_tokens: int = 0) -> list[HiddenStateResult]:
        return await asyncio.to_thread(self.hidden_states_sync, prompts, layers, pooling, uncertainty, max_tokens)

    def hidden_states_sync(self, prompts, layers, pooling, uncertainty: bool = False, max_tokens: int = 0) -> list[HiddenStateResult]:
        import torch

        poolings = [pooling] if isinstance(pooling, Pooling) else list(pooling)
        resolved = resolve_layers(layers, self.info.num_layers)
        results = []
        with self._lock, torch.inference_mode():
            for ids in prompts:
                ids = self._with_bos(truncate_prompt(ids, max_tokens))
                states, unc = hidden_features(self.model, [ids], resolved, [p.value for p in poolings], uncertainty,
                                              self.info.num_layers, self.cfg.device)
                results.append(HiddenStateResult(states=states[0], layers=resolved, prompt_tokens=len(ids),
                                                 uncertainty=None if unc is None else unc[0]))
        return results


def truncate_prompt(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the last `max_tokens` prompt tokens (0 = all): the end of a prompt is what the model answers from."""
    return list(ids[-max_tokens:]) if max_tokens and len(ids) > max_tokens else list(ids)


def hidden_features(model, batch: list[list[int]], resolved: list[int], poolings: Sequence[str], uncertainty: bool,
                    num_layers: int, device: str = "cpu", pad_id: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The one definition of hidden-state features, shared by the worker's HiddenState RPC and offline
    extraction (probes/features.py): prefill a right-padded batch with the decoder only, then per prompt

    - states [B, len(resolved) * len(poolings), H] float32, layer-major then pooling ("last_token" = the
      last prompt token, "mean" = the mean over prompt tokens); layer r = hidden_states[r] (0 = embeddings,
      num_layers = after the final norm);
    - uncertainty [B, 3] float32 or None: entropy (nats) and top-1 probability of the next-token distribution
      after the last prompt token (the LM head on the final normed state), and log(prompt tokens).

    `model` may have fewer decoder layers than `num_layers` (an early-exit copy) when neither the final
    layer nor uncertainty is asked for; hidden_states[r] for r < its layer count is unchanged by the cut.
    Runs without autograd whatever the caller's mode."""
    import torch

    with torch.no_grad():
        return _hidden_features(model, batch, resolved, poolings, uncertainty, num_layers, device, pad_id)


def _hidden_features(model, batch: list[list[int]], resolved: list[int], poolings: Sequence[str], uncertainty: bool,
                     num_layers: int, device: str, pad_id: int) -> tuple[np.ndarray, np.ndarray | None]:
    import torch

    if (uncertainty or num_layers in resolved) and len(model.model.layers) != num_layers:
        raise ValueError("the final layer and uncertainty need the full model")
    n = max(len(x) for x in batch)
    inp = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, ids in enumerate(batch):
        inp[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
    inp, mask = inp.to(device), mask.to(device)
    # The decoder only: the LM head runs on the last token alone (a vocab projection per position saved).
    hs = model.model(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states
    return pool_features(hs, mask, resolved, poolings, model.lm_head if uncertainty else None)


def pool_features(hs, mask, resolved: list[int], poolings: Sequence[str], lm_head=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pool a prefill's `hidden_states` (per layer [B, T, H]) under its attention `mask` into the feature
    layout of `hidden_features`; with `lm_head`, also the uncertainty columns from the final layer."""
    import torch

    last = mask.sum(1) - 1
    rows = torch.arange(mask.shape[0], device=mask.device)
    parts = []
    m = mask.unsqueeze(-1).float()
    for layer in resolved:
        h = hs[layer].float()
        for p in poolings:
            parts.append(h[rows, last] if p in ("last", Pooling.LAST_TOKEN.value) else (h * m).sum(1) / m.sum(1))
    states = torch.stack(parts, 1).cpu().numpy().astype(np.float32)
    unc = None
    if lm_head is not None:
        logp = torch.log_softmax(lm_head(hs[-1][rows, last]).float(), -1)
        ent = -(logp.exp() * logp).sum(-1)
        top1 = logp.max(-1).values.exp()
        ntok = torch.log(mask.sum(1).float())
        unc = torch.stack([ent, top1, ntok], 1).cpu().numpy().astype(np.float32)
    return states, unc


def resolve_layers(layers: list[int], n_layers: int) -> list[int]:
    """[] -> [n_layers]; negative indices count from the end (-1 = n_layers, the final layer)."""
    from workers.errors import InvalidRequest

    if not layers:
        return [n_layers]
    out = []
    for layer in layers:
        r = layer if layer >= 0 else n_layers + 1 + layer
        if not 0 <= r <= n_layers:
            raise InvalidRequest(f"layer {layer} is out of range: valid layers are 0..{n_layers} or -{n_layers + 1}..-1")
        out.append(r)
    return out


def _sample(logits, sampling: Sampling, gen) -> int:
    import torch

    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    top_p = sampling.top_p if 0 < sampling.top_p < 1 else 1.0
    if top_p < 1.0:
        sorted_p, sorted_i = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, sorted_i[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (gen_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _tokenizer_id(tokenizer) -> str:
    """Two tokenizers with the same id map text to the same token ids."""
    import hashlib

    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{i}:{tok}\n".encode())
    return f"{type(tokenizer).__name__}-{len(vocab)}-{h.hexdigest()[:12]}"
