"""RouteLLM arm of the peers benchmark: RouteLLM's own OpenAI-compatible server (`routellm.openai_server`,
its FastAPI app and Controller, unchanged) with the `random` router (no download) and both its strong and
weak model set to vLLM's OpenAI server. Clients ask for model `router-random-0.5`.

`python -m routellm.openai_server` binds 0.0.0.0; this launcher runs the same app with uvicorn on
127.0.0.1 instead. Runs in the peers' own environment (.venv-peers):

    .venv-peers/bin/python ops/bench/peers_routellm.py --port 8301 --api-base http://127.0.0.1:8100/v1
"""
from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-base", required=True, help="vLLM's OpenAI server, e.g. http://127.0.0.1:8100/v1")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # routellm builds OpenAI clients at import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # routellm.openai_server parses its own command line at import time.
    sys.argv = ["routellm.openai_server", "--routers", "random", "--port", str(args.port),
                "--base-url", args.api_base, "--api-key", "unused",
                "--strong-model", f"openai/{args.model}", "--weak-model", f"openai/{args.model}"]
    import uvicorn
    from routellm import openai_server

    uvicorn.run(openai_server.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
