"""A benchmark's own serving stack: one worker process and a local Ray Serve router over it, with
both proxies (gRPC for thinkroute.v1.Router, HTTP for the OpenAI API). Shared by the benchmarks that
compare paths through the router (router_overhead.py, http_overhead.py)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    worker: str          # host:port of the worker
    grpc: str            # host:port of Ray Serve's gRPC proxy
    http: str            # http://host:port of Ray Serve's HTTP proxy
    stop: Callable[[], None]


def start_stack(backend: str, model: str, log_name: str, extra_apps: dict | None = None) -> Stack:
    """Start the worker (same launcher as the tests) and the router app; `extra_apps` maps an app name to
    a bound deployment to run beside it (route prefix /<name>)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import free_port, start_worker

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.config import load_config
    from router.serve_app import GRPC_SERVICERS, build_app

    print(f"starting a {backend} worker for {model} ...", file=sys.stderr)
    w = start_worker(model, backend, REPO / "runs" / "bench" / log_name).wait_ready()
    config = load_config(overrides={"models": {model: {"backend": backend, "replicas": 0, "addresses": [w.address]}},
                                    "router.default_model": model, "router.roles": {}, "policy": None})
    gport, hport = free_port(), free_port()

    def stop() -> None:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        w.stop()

    try:
        print("starting Ray Serve ...", file=sys.stderr)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=hport),
                    grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=list(GRPC_SERVICERS)))
        serve.run(build_app(config, {model: [w.address]}), name="thinkroute", route_prefix="/")
        for name, app in (extra_apps or {}).items():
            serve.run(app, name=name, route_prefix=f"/{name}")
    except BaseException:
        stop()  # never leave the worker behind
        raise

    return Stack(w.address, f"127.0.0.1:{gport}", f"http://127.0.0.1:{hport}", stop)


# -- one Ray Serve cluster of the router-overhead benchmark, as its own process ------------------------
OVERHEAD_MODEL = "smollm2-135m"


def overhead_configs(worker_a: str, worker_b: str, redis_url: str | None, model: str = OVERHEAD_MODEL,
                     backend: str = "vllm", replay_file: str | None = None):
    """The two router configs router_overhead.py compares, for requests that fix the model:

    - `fixed`: the lightest config: one worker, no policy, the load scorer only, no Redis;
    - `default`: the embedded default's router settings (policy on, scorers load + prefix + session, the
      prefix scorer reading the Redis prefix index) over two drafter replicas, so every model call picks
      between two replicas (a Tokenize RPC and a Redis read). The reasoner is left out (a request that
      fixes the drafter never calls it): roles and policy candidates name the drafter only.
    """
    from router.config import load_config

    m = model
    pool = {"backend": backend, "replicas": 0}
    if backend == "replay":  # the config checks the block; the workers themselves were started with it
        pool["replay"] = {"file": replay_file, "tokens_per_s": 0, "ttft_ms": 0}
    fixed = load_config(overrides={"models": {m: {**pool, "addresses": [worker_a]}},
                                   "router.default_model": m, "router.roles": {}, "policy": None,
                                   "redis.enabled": False, "router.scorers": [{"name": "load"}]})
    default = load_config(overrides={
        "models": {m: {**pool, "addresses": [worker_a, worker_b]}},
        "router.roles": {"small": m, "large": m}, "router.default_model": m,
        "policy.artifact": None,  # requests fix the model; planning is measured apart (planning_overhead.py)
        "policy.prices": {m: 0.05},
        "policy.candidates": {"drafter": {"strategy": "direct", "model": m}, "specreason": {"strategy": "specreason"}},
        "policy.priors": {"drafter": {"p_correct": 0.05, "tokens": {m: 128}},
                          "specreason": {"p_correct": 0.06, "tokens": {m: 160}}},
        "redis.enabled": redis_url is not None})
    for s in default.router.scorers:
        if s.name == "prefix" and redis_url:
            s.params["redis_url"] = redis_url
    return fixed, default


def serve_overhead_apps() -> int:
    """`python ops/bench/stack.py --worker-a A --worker-b B ...`: a local Ray (private temp dir) with Ray
    Serve's gRPC ingress and three apps: `echo` (a no-op Router.Generate: the ingress floor), `fixed` and
    `default` (overhead_configs). The ingress (Python proxy or HAProxy) comes from the environment the
    parent sets (router/ingress.py). Writes --ready-file once all apps run; serves until SIGTERM."""
    import argparse
    import json
    import os
    import signal
    import time

    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=serve_overhead_apps.__doc__)
    ap.add_argument("--worker-a", required=True)
    ap.add_argument("--worker-b", required=True)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--model", default=OVERHEAD_MODEL, help="the model both workers serve")
    ap.add_argument("--backend", default="vllm", help="the workers' backend (vllm or replay)")
    ap.add_argument("--replay-file", default=None, help="with --backend replay: the workers' outcome file")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--temp-dir", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from router.serve_app import GRPC_SERVICERS, build_app
    from thinkroute.v1 import router_pb2 as rpb

    class EchoRouter:
        """Answers thinkroute.v1.Router/Generate at once: the cost of the ingress hop alone."""

        async def Generate(self, request, grpc_context=None):
            return rpb.RouteResponse(text="", request_id=request.request_id)

    fixed, default = overhead_configs(args.worker_a, args.worker_b, args.redis_url, args.model, args.backend,
                                      args.replay_file)
    try:
        for attempt in range(3):  # Ray gives its raylet a fixed 30 s to register: short on a loaded 2-core host
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
        serve.run(serve.deployment(EchoRouter, name="echo", ray_actor_options={"num_cpus": 0}).bind(),
                  name="echo", route_prefix="/echo")
        serve.run(build_app(fixed, {args.model: [args.worker_a]}), name="fixed", route_prefix="/fixed")
        serve.run(build_app(default, {args.model: [args.worker_a, args.worker_b]}), name="default",
                  route_prefix="/default")
        Path(args.ready_file).write_text(json.dumps({"grpc": f"127.0.0.1:{args.grpc_port}", "pid": os.getpid()}))
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
    sys.exit(serve_overhead_apps())
