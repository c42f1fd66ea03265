"""`thinkroute worker`: serve one model over gRPC (thinkroute.v1.Worker + grpc.health.v1)."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from workers.config import EngineConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="serve one model over gRPC",
        description=(
            "Serve one model over gRPC (thinkroute.v1.Worker: Generate, Score, HiddenState, Tokenize, Info, Load; "
            "plus the standard health service). Prints 'READY host:port' once it serves. SIGTERM drains in-flight "
            "requests, then exits. Exit code 3 means the engine died (a supervisor should restart it)."
        ),
    )
    p.add_argument("--model", required=True, help="registry name (smollm2-135m, gemma3-270m), a .gguf file, or an HF directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm",
                   help="vllm (continuous batching, prefix cache; default) or hf (transformers reference)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="default float32")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length served (default 2048)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM CPU KV cache size in GiB (default 1)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="requests run at once by vllm (default 32)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--no-enforce-eager", action="store_true", help="let vLLM compile graphs (slower start)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain in-flight requests on shutdown")
    p.add_argument("--replica-id", default=None, help="unique id of this replica (default host-pid)")
    p.add_argument("--ready-file", default=None, help="write the bound host:port here once serving")
    p.add_argument("--config-json", default=None, help="full EngineConfig as JSON (overrides the flags above; "
                   "visible in the process list: put nothing secret in it)")
    p.add_argument("--config-file", default=None, help="full EngineConfig in a JSON file (overrides the flags and "
                   "--config-json; what `thinkroute serve` uses, written 0600)")
    p.add_argument("--tls-cert-file", default=None, help="PEM certificate chain: serve TLS only (with --tls-key-file)")
    p.add_argument("--tls-key-file", default=None, help="PEM private key of --tls-cert-file (keep it mode 0600)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus GET /metrics (vLLM's metric names: vllm:num_requests_waiting, "
                        "vllm:kv_cache_usage_perc, vllm:time_to_first_token_seconds, ...) on --host at this port; "
                        "0 picks a free one (printed on stderr and reported by the Load RPC); default: not served")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.server import serve_worker

    if args.config_file:
        try:
            text = Path(args.config_file).read_text()
        except OSError as e:
            print(f"thinkroute worker: error: cannot read --config-file {args.config_file}: {e.strerror}", file=sys.stderr)
            return 2
        cfg = EngineConfig.model_validate_json(text)
    elif args.config_json:
        cfg = EngineConfig.model_validate_json(args.config_json)
    else:
        cfg = EngineConfig(
            model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
            max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib, max_num_seqs=args.max_num_seqs,
            max_queue=args.max_queue, enforce_eager=not args.no_enforce_eager,
        )
    from workers.errors import WorkerError

    try:
        if bool(args.tls_cert_file) != bool(args.tls_key_file):
            print("thinkroute worker: error: --tls-cert-file and --tls-key-file go together", file=sys.stderr)
            return 2
        return asyncio.run(serve_worker(cfg, args.host, args.port, args.grace, args.replica_id, args.ready_file,
                                        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                                        metrics_port=args.metrics_port))
    except WorkerError as e:
        print(f"thinkroute worker: error: {e}", file=sys.stderr)
        return 2
