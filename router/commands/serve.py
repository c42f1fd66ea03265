"""`thinkroute serve`: Redis, the configured workers, local Ray and the Ray Serve router."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the router locally: Redis, workers, Ray Serve (gRPC + HTTP)",
        description=(
            "Start everything the config names on this machine: a Redis server (shared prefix cache), one worker "
            "process per model replica, a local Ray, and the Ray Serve router application with its gRPC ingress "
            "(thinkroute.v1.Router on serve.grpc_port). Without --config it runs the embedded default: SmolLM2-135M "
            "(drafter) and Gemma 3 270M (reasoner) on vLLM, CPU. Ctrl-C / SIGTERM shuts everything down, draining "
            "in-flight requests."
        ),
    )
    p.add_argument("--config", default=None, help="YAML config (default: the embedded default, router/configs/embedded.yaml)")
    p.add_argument("--run-dir", default=None, help="where logs and Redis data go (default: config run_dir)")
    p.add_argument("--ready-file", default=None, help="touch this file once the router answers (for scripts)")
    p.add_argument("--backend", choices=["vllm", "hf"], default=None, help="override every model's backend")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.launcher import LocalCluster, say

    config = load_config(args.config)
    if args.backend:
        for pool in config.models.values():
            if pool.backend != "replay":  # a replay pool has no model to run on another backend
                pool.backend = args.backend
    cluster = LocalCluster(config, Path(args.run_dir or config.run_dir))
    stop = threading.Event()
    started = False

    def on_signal(*_) -> None:
        if not started:
            raise KeyboardInterrupt  # still starting: unwind to the cleanup below
        stop.set()

    def install_handlers() -> None:
        # NOTE: ray.init installs its own C-level SIGTERM handler (it logs and aborts the driver, which
        # would orphan the workers); ours goes back on top of it once Ray is up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install_handlers()
    try:
        cluster.start()
        install_handlers()
        started = True
        if args.ready_file:
            Path(args.ready_file).write_text(f"{config.serve.host}:{config.serve.grpc_port}\n")
        say("serving; Ctrl-C to stop")
        stop.wait()
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        cluster.stop()
    return 0
