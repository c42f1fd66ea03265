"""GPU path of the hf backend: greedy output on CUDA equals the CPU reference. Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_hf_engine_on_cuda_matches_cpu(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    outs = {}
    for device in ("cpu", "cuda"):
        model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).to(device).eval()
        with torch.inference_mode():
            outs[device] = model.generate(ids.to(device), max_new_tokens=16, do_sample=False)[0].cpu().tolist()
    assert outs["cuda"] == outs["cpu"]
