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
    from router.serve_app import ROUTER_SERVICER, build_app

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
                    grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=[ROUTER_SERVICER]))
        serve.run(build_app(config, {model: [w.address]}), name="thinkroute", route_prefix="/")
        for name, app in (extra_apps or {}).items():
            serve.run(app, name=name, route_prefix=f"/{name}")
    except BaseException:
        stop()  # never leave the worker behind
        raise

    return Stack(w.address, f"127.0.0.1:{gport}", f"http://127.0.0.1:{hport}", stop)
