"""The peers' own virtual environment (.venv-peers, git-ignored): LiteLLM and RouteLLM with everything
their servers import, installed from the package index at the versions pinned in
ops/requirements-peers.lock, apart from thinkroute's .venv (their pins clash with it).

`ensure_peers_env()` creates it on first use and reuses it afterwards: a stamp file holds the lock's hash,
and a run with an unchanged lock only checks that the environment imports. torch is installed first on
its own (`torch==2.13.0`, the CPU build pip finds on local disk), so that nothing pulls a CUDA build;
the check afterwards refuses a torch without `+cpu` and any `nvidia-*` package.

    python ops/bench/peers_env.py          # create / check it alone
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("THINKROUTE_PEERS_VENV", REPO / ".venv-peers"))
LOCK = REPO / "ops" / "requirements-peers.lock"
TORCH = "torch==2.13.0"
CHECK = """
import importlib.metadata as md, importlib.util, sys
torch = md.version("torch")
assert "+cpu" in torch, f"expected a CPU build of torch, got {torch}"
gpu = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia")]
assert not gpu, f"CUDA packages found: {gpu}"
missing = [m for m in ("litellm", "routellm", "fastapi", "uvicorn", "shortuuid", "transformers", "datasets")
           if importlib.util.find_spec(m) is None]
assert not missing, f"missing modules: {missing}"
print("litellm", md.version("litellm"), "routellm", md.version("routellm"), "torch", torch)
"""

def python() -> Path:
    return VENV / "bin" / "python"


def _say(msg: str) -> None:
    print(f"==> [peers env {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], env: dict | None = None) -> None:
    # pip's output, progress bars included, goes to our stderr.
    subprocess.run(argv, check=True, stdout=sys.stderr, env=env)


def _want() -> str:
    return hashlib.sha256(LOCK.read_bytes() + TORCH.encode()).hexdigest()[:16]


def ensure_peers_env() -> dict[str, str]:
    """Create or reuse .venv-peers; return the versions it holds. Raises CalledProcessError on failure."""
    stamp = VENV / ".peers-stamp"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OPENAI_API_KEY="unused")
    if stamp.exists() and stamp.read_text().strip() == _want() and python().exists():
        _say(f"reusing {VENV} (lock unchanged)")
    else:
        if not python().exists():
            _say(f"creating {VENV}")
            _run([sys.executable, "-m", "venv", str(VENV)])
        _say(f"installing {TORCH} first (the CPU build on local disk; never a CUDA one)")
        _run([str(python()), "-m", "pip", "install", "--progress-bar", "on", TORCH])
        _say(f"installing the peers from {LOCK.relative_to(REPO)} (litellm, routellm and their pinned deps)")
        _run([str(python()), "-m", "pip", "install", "--progress-bar", "on", "--no-deps", "-r", str(LOCK)])
        stamp.write_text(_want())
    out = subprocess.run([str(python()), "-c", CHECK], check=True, capture_output=True, text=True, env=env)
    words = out.stdout.split()
    versions = dict(zip(words[::2], words[1::2]))
    _say("ok: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return versions


if __name__ == "__main__":
    ensure_peers_env()
