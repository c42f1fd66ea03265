"""HiddenState without a second full model: a truncated forward, micro-batched.

The `vllm` backend cannot read hidden states from its generate runner (workers/vllm_engine.py), so
HiddenState runs on transformers modules over the same safetensors directory, in the worker process.
This module keeps that second model as small as the requests allow and shares its forwards:

- `TruncatedModel` loads the embeddings and only the first `depth` decoder layers (the deepest layer
  asked for so far; the checkpoint's other tensors are never read into memory), plus the final norm
  and LM head only when a request reads the final layer or the uncertainty columns. A probe on layers
  2, 4 and 8 of SmolLM2's 30 runs 8 layers per prefill, not 30. It grows (reloads deeper) when a
  request needs a deeper layer; it never shrinks.
- `HiddenStateBatcher` collects the calls arriving within `window_ms` of the first one (and those
  that arrive while a forward runs) into one right-padded forward, in length-sorted chunks of at
  most `max_batch_tokens` padded tokens, on one dedicated thread (`threads` torch threads).

The features are exactly those of `workers.hf_engine.hidden_features` (the one definition, used by
the hf backend and by offline extraction): layer r = the residual stream after r decoder layers
(0 = embeddings), the final layer = after the final norm; pooling "last_token" or "mean" over prompt
tokens; uncertainty = [entropy, top-1 probability, log prompt tokens]. A truncated model replaces the
final norm by the identity, so its last hidden state is the raw residual stream, equal to the full
model's. Right padding with causal attention leaves every real token's states unchanged by the pads;
batched and single forwards differ only by float rounding (tests/unit/test_hidden.py bounds it:
max abs difference <= 1e-4 with unit-scale states, float32).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from workers.hf_engine import pool_features
from workers.types import HiddenStateResult, Pooling

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Need:
    """What a forward must provide: decoder layers to run and whether the final norm + LM head are needed."""

    depth: int
    head: bool


def need_of(resolved: Sequence[int], uncertainty: bool, num_layers: int) -> Need:
    """Layers `resolved` (0..num_layers) and `uncertainty` -> the forward they need.

    The final layer (after the final norm) and the uncertainty columns (LM head on the final state) need
    every decoder layer and the head; otherwise the deepest layer read is the depth."""
    if uncertainty or num_layers in resolved:
        return Need(num_layers, True)
    return Need(max(resolved, default=0), False)


class TruncatedModel:
    """Embeddings + the first `depth` decoder layers of a causal LM directory (+ norm and head on demand).

    Not thread-safe: `ensure` and `features` are called from the batcher's one thread.
    """

    def __init__(self, model_dir: Path, num_layers: int, dtype: str = "float32", device: str = "cpu",
                 pad_id: int = 0) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use one of {_DTYPES}")
        self.model_dir, self.num_layers, self.dtype, self.device, self.pad_id = Path(model_dir), num_layers, dtype, device, pad_id
        self.loaded = Need(-1, False)  # nothing loaded yet
        self.base = None      # the decoder stack (embeddings, layers[:depth], norm or identity)
        self.lm_head = None   # only with head=True
        self.load_seconds = 0.0

    def ensure(self, need: Need) -> None:
        """Load (or grow to) a model that serves `need`; a no-op when the loaded one already does."""
        if need.depth <= self.loaded.depth and (self.loaded.head or not need.head):
            return
        target = Need(max(need.depth, self.loaded.depth), need.head or self.loaded.head)
        if target.head:
            target = Need(self.num_layers, True)
        self._load(target)

    def _load(self, target: Need) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        t0 = time.monotonic()
        dtype = getattr(torch, self.dtype)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the skipped layers are reported as "unexpected" keys: expected here
        try:
            if target.head:
                model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()
                base, head = model.model, model.lm_head
            else:
                config = AutoConfig.from_pretrained(self.model_dir)
                text = getattr(config, "text_config", config)
                depth = max(target.depth, 1)  # a model needs one layer to build; depth 0 reads only embeddings
                text.num_hidden_layers = depth
                if getattr(text, "layer_types", None):
                    text.layer_types = list(text.layer_types)[:depth]
                base = AutoModel.from_pretrained(self.model_dir, config=config, dtype=dtype).to(self.device).eval()
                base = getattr(base, "language_model", base)
                # The raw residual stream after `depth` layers is what the full model calls hidden_states[depth].
                base.norm = torch.nn.Identity()
                head = None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.base, self.lm_head, self.loaded = base, head, target
        self.load_seconds = time.monotonic() - t0
        n_params = sum(p.numel() for p in base.parameters())
        log.info("hidden states: loaded %d of %d decoder layers%s (%.1fM parameters) in %.1f s", len(base.layers),
                 self.num_layers, " + final norm and LM head" if target.head else "", n_params / 1e6, self.load_seconds)

    def parameters(self) -> int:
        """Parameters held (embeddings, loaded layers, norm and head), 0 before the first load."""
        if self.base is None:
            return 0
        n = sum(p.numel() for p in self.base.parameters())
        if self.lm_head is not None and self.lm_head.weight.data_ptr() != self.base.embed_tokens.weight.data_ptr():
            n += self.lm_head.weight.numel()
        return n

    def features(self, batch: list[list[int]], resolved: list[int], poolings: Sequence[str],
                 uncertainty: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One right-padded forward of `batch`: states [B, len(resolved) * len(poolings), H] float32
        (layer-major, then pooling) and uncertainty [B, 3] or None; see the module docstring."""
        import torch

        need = need_of(resolved, uncertainty, self.num_layers)
        self.ensure(need)
        n = max(len(x) for x in batch)
        inp = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for r, ids in enumerate(batch):
            inp[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        inp, mask = inp.to(self.device), mask.to(self.device)
        layers = self.base.layers
        with torch.inference_mode():
            if need.depth == 0 and not need.head:
                hs = (self.base.embed_tokens(inp),)
            else:
                # Run only the layers this batch reads (a deeper loaded model keeps its layers for later);
                # cut short, the last hidden state must be the raw residual stream: no final norm.
                norm = self.base.norm
                if need.depth < len(layers):
                    self.base.layers = layers[: need.depth]
                    self.base.norm = torch.nn.Identity()
                try:
                    hs = self.base(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states
                finally:
                    self.base.layers, self.base.norm = layers, norm
            states, unc = pool_features(hs, mask, resolved, poolings, self.lm_head if uncertainty else None)
        return states, unc


@dataclass
class _Job:
    prompts: list[list[int]]
    resolved: list[int]
    poolings: tuple[str, ...]
    uncertainty: bool
    future: asyncio.Future
    results: list[HiddenStateResult | None] = field(default_factory=list)


class HiddenStateBatcher:
    """Shares forwards between concurrent HiddenState calls. Create and use on the serving event loop.

    `submit` waits for its results. The first call of a batch waits `window_ms` for others; calls that
    arrive while a forward runs join the next batch. Each forward runs on the batcher's own thread, so
    the event loop (generation streams, health checks) stays free.
    """

    def __init__(self, model: TruncatedModel, window_ms: float = 2.0, max_batch_tokens: int = 16384,
                 threads: int | None = None) -> None:
        self.model = model
        self.window_s = max(0.0, window_ms) / 1e3
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.threads = threads
        self._pending: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hidden-states")
        self._thread_init = threading.Event()
        #: Forwards run and prompts served (for tests and the benchmark).
        self.forwards = 0
        self.prompts_served = 0
        self.batches = 0

    async def warm(self, resolved: list[int], uncertainty: bool) -> float:
        """Load what `resolved` + `uncertainty` need and run one short forward; returns the seconds taken."""
        t0 = time.monotonic()
        await self._run_in_thread(self.model.features, [[self.model.pad_id or 0] * 8], resolved,
                                  (Pooling.LAST_TOKEN.value,), uncertainty)
        return time.monotonic() - t0

    async def submit(self, prompts: list[list[int]], resolved: list[int], poolings: Sequence[str],
                     uncertainty: bool) -> list[HiddenStateResult]:
        """Hidden states of `prompts` (token ids as the model sees them: BOS and truncation applied)."""
        loop = asyncio.get_running_loop()
        job = _Job([list(p) for p in prompts], list(resolved), tuple(poolings), uncertainty, loop.create_future(),
                   [None] * len(prompts))
        self._pending.append(job)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="hidden-state-batcher")
        self._wake.set()
        return await job.future

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            if self.window_s:
                await asyncio.sleep(self.window_s)
            jobs = [j for j in self._pending if not j.future.done()]  # a cancelled caller's job is skipped
            self._pending = []
            if not jobs:
                continue
            self.batches += 1
            try:
                await self._run_in_thread(self._serve, jobs)
            except Exception as e:  # noqa: BLE001 - surfaced to every caller of the batch
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(j.results)

    async def _run_in_thread(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn, args):
        if not self._thread_init.is_set():
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            self._thread_init.set()
        return fn(*args)

    def _serve(self, jobs: list[_Job]) -> None:
        """Runs on the batcher thread: every prompt of `jobs` in length-sorted, token-bounded forwards."""
        union = sorted({r for j in jobs for r in j.resolved})
        pools = tuple(dict.fromkeys(p for j in jobs for p in j.poolings))
        unc = any(j.uncertainty for j in jobs)
        items = [(len(ids), ji, pi) for ji, j in enumerate(jobs) for pi, ids in enumerate(j.prompts)]
        items.sort()
        chunk: list[tuple[int, int, int]] = []
        for item in items:
            if chunk and (len(chunk) + 1) * item[0] > self.max_batch_tokens:
                self._forward(jobs, chunk, union, pools, unc)
                chunk = []
            chunk.append(item)
        if chunk:
            self._forward(jobs, chunk, union, pools, unc)

    def _forward(self, jobs: list[_Job], chunk, union: list[int], pools: tuple[str, ...], unc: bool) -> None:
        states, uncs = self.model.features([jobs[ji].prompts[pi] for _, ji, pi in chunk], union, pools, unc)
        self.forwards += 1
        self.prompts_served += len(chunk)
        # states[b] is [len(union) * len(pools), H], layer-major: pick each job's own layers and poolings.
        col = {(layer, p): li * len(pools) + k for li, layer in enumerate(union) for k, p in enumerate(pools)}
        for b, (n, ji, pi) in enumerate(chunk):
            j = jobs[ji]
            idx = [col[(layer, p)] for layer in j.resolved for p in j.poolings]
            j.results[pi] = HiddenStateResult(
                states=np.ascontiguousarray(states[b, idx]), layers=list(j.resolved), prompt_tokens=n,
                uncertainty=None if not j.uncertainty or uncs is None else uncs[b])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
