"""Text-only feature sources the router computes itself, without a worker: the baselines a served
policy is compared with (`thinkroute train --features noise|length`).

- `noise`: a standard-normal vector seeded by sha256(text) (and the spec's seed): deterministic per
  text, so training and serving compute the same numbers, and carrying no information about the text.
- `length`: log(prompt tokens), with prompt tokens estimated as the live planner does
  (`prompt_tokens_estimate`: characters / 4, at least 1).

Both follow the `probes.features.FeatureSource` contract (`model_id`, `spec`, `features(texts)`);
their `model_id` is "none" (no model reads the text), so no drafter identity check applies.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

TEXT_SOURCES = ("noise", "log_prompt_tokens")
NO_MODEL = "none"


def prompt_tokens_estimate(text: str) -> int:
    """The live planner's up-front prompt-token estimate (router/policy/planning.py)."""
    return max(1, len(text) // 4)


def is_text_spec(spec: dict) -> bool:
    return spec.get("source") in TEXT_SOURCES


class NoiseFeatures:
    model_id = NO_MODEL

    def __init__(self, dim: int = 64, seed: int = 0, progress: bool = False) -> None:
        if not 1 <= int(dim) <= 4096:
            raise ValueError(f"noise dim must be in [1, 4096], got {dim}")
        self.dim, self.seed = int(dim), int(seed)

    @property
    def spec(self) -> dict:
        return {"source": "noise", "dim": self.dim, "seed": self.seed}

    def features(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            h = int(hashlib.sha256(t.encode("utf-8")).hexdigest()[:16], 16)
            out[i] = np.random.default_rng([self.seed, h]).standard_normal(self.dim)
        return out


class LengthFeatures:
    model_id = NO_MODEL

    def __init__(self, progress: bool = False) -> None:
        pass

    @property
    def spec(self) -> dict:
        return {"source": "log_prompt_tokens", "estimate": "chars/4"}

    def features(self, texts: list[str]) -> np.ndarray:
        return np.array([[math.log(prompt_tokens_estimate(t))] for t in texts], np.float32)


def source_for_spec(spec: dict):
    """The text source that computes a saved spec's features (ValueError for other specs)."""
    if spec.get("source") == "noise":
        return NoiseFeatures(spec["dim"], spec.get("seed", 0))
    if spec.get("source") == "log_prompt_tokens":
        if spec.get("estimate", "chars/4") != "chars/4":
            raise ValueError(f"unknown prompt-token estimate {spec.get('estimate')!r} in {spec}")
        return LengthFeatures()
    raise ValueError(f"feature spec {spec} is not a text feature spec (sources {list(TEXT_SOURCES)})")
