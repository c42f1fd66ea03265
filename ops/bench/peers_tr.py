"""One thinkroute arm of the peers benchmark, as its own process: a local Ray cluster (private temp dir),
Ray Serve with both ingresses (HTTP proxy for the OpenAI API, gRPC proxy for thinkroute.v1.Router) and the
router app of the embedded config reduced to one model, pointed at an already running worker.

The proxy mode comes from the environment, as in any Ray Serve deployment: `RAY_SERVE_ENABLE_HA_PROXY=1`
selects Ray Serve's HAProxy ingress, unset its Python proxy. Writes `{"http": ..., "grpc": ...}` to
--ready-file once both ingresses answer, then serves until SIGTERM/SIGINT, when it shuts Serve and Ray down.

    python ops/bench/peers_tr.py --worker 127.0.0.1:50051 --http-port 8101 --grpc-port 9101 \
        --temp-dir /tmp/rp-1234-py --ready-file runs/bench/peers/tr-py.ready
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", required=True, help="host:port of the smollm2-135m worker")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--temp-dir", required=True, help="Ray's temp dir for this cluster (short path)")
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()

    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import GRPC_SERVICERS, build_app

    config = load_config(overrides={
        "models": {args.model: {"backend": "vllm", "replicas": 0, "addresses": [args.worker]}},
        "router.default_model": args.model, "router.roles": {}, "policy": None, "redis.enabled": False})
    mode = "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "python"
    print(f"thinkroute arm: Ray Serve {mode} proxy, worker {args.worker}", flush=True)
    try:
        for attempt in range(3):  # Ray gives its raylet a fixed 30 s to register: too short on a loaded 2-core host
            try:
                ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=args.temp_dir,
                         _node_ip_address="127.0.0.1")
                break
            except Exception as e:  # noqa: BLE001 - "The current node timed out during startup"
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise
                print(f"Ray start timed out (attempt {attempt + 1}); retrying", flush=True)
                ray.shutdown()
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=args.http_port),
                    grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=list(GRPC_SERVICERS)))
        serve.run(build_app(config, {args.model: [args.worker]}), name="thinkroute", route_prefix="/")
        Path(args.ready_file).write_text(json.dumps({
            "http": f"http://127.0.0.1:{args.http_port}", "grpc": f"127.0.0.1:{args.grpc_port}", "mode": mode,
            "pid": os.getpid()}))
        print("ready", flush=True)
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
