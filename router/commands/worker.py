"""`thinkroute worker`: serve one model over gRPC (thinkroute.v1.Worker + grpc.health.v1).

Engine settings come from flags, or from `--config FILE` (the engine config as YAML or JSON: the
fields of `models.<name>` in the router's config, i.e. what `thinkroute serve` writes for its workers)
with explicitly given flags overriding it. Such a file may also hold `registration:` (how the worker
registers itself in the Redis worker registry, workers/registration.py) and `kv_redis_url:` (the Redis
of `kv_connector: redis`). Secrets never come from argv: the Redis password and the KV MAC key are
read from the environment (THINKROUTE_REDIS_PASSWORD, THINKROUTE_KV_MAC_KEY, or `<VAR>_FILE`).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import yaml

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
    p.add_argument("--model", default=None, help="registry name (smollm2-135m, gemma3-270m), a .gguf file, or an HF "
                   "directory (required unless --config names it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="where the model runs (default cpu)")
    p.add_argument("--backend", choices=["vllm", "hf", "replay"], default=None,
                   help="vllm (continuous batching, prefix cache; default), hf (transformers reference) or replay "
                        "(recorded answers of --replay-file; model name <system>@replay)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="default float32")
    p.add_argument("--max-model-len", type=int, default=None, help="context length served (default 2048)")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM CPU KV cache size in GiB (default 1)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="requests run at once by vllm (default 32)")
    p.add_argument("--max-queue", type=int, default=None, help="requests waiting before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--no-enforce-eager", action="store_true", default=None, help="let vLLM compile graphs (slower start)")
    p.add_argument("--replay-file", default=None, help="backend replay: outcome file (JSON lines) to answer from")
    p.add_argument("--replay-system", default="", help="backend replay: system to replay (default: the model name "
                   "before @replay)")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="backend replay: streaming rate (0 = unpaced)")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="backend replay: time to the first token in ms")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain in-flight requests on shutdown")
    p.add_argument("--replica-id", default=None, help="unique id of this replica (default host-pid)")
    p.add_argument("--ready-file", default=None, help="write the bound host:port here once serving")
    p.add_argument("--config-json", default=None, help="full EngineConfig as JSON (overrides the flags above; "
                   "visible in the process list: put nothing secret in it)")
    p.add_argument("--config-file", default=None, help="full EngineConfig in a JSON file (overrides the flags and "
                   "--config-json; what `thinkroute serve` uses, written 0600)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="engine config as YAML/JSON (the fields of models.<name>; optional `registration:` and "
                        "`kv_redis_url:`); flags given explicitly override it")
    p.add_argument("--register", default=None, metavar="REDIS_URL",
                   help="register in the Redis worker registry at this redis:// or rediss:// URL (no password in "
                        "it: set $THINKROUTE_REDIS_PASSWORD) and heartbeat until shutdown, so routers with "
                        "router.discovery find this worker")
    p.add_argument("--pool", default=None, help="with --register: the router's pool name (default: the model name)")
    p.add_argument("--advertise", default=None, metavar="HOST:PORT",
                   help="with --register: the address routers dial (default: the bound one; with --host 0.0.0.0, "
                        "$POD_IP or this host's name)")
    p.add_argument("--heartbeat-s", type=float, default=None, help="with --register: seconds between heartbeats "
                   "(default 2; the registration expires after 3 missed)")
    p.add_argument("--kv-redis-url", default=None, metavar="REDIS_URL",
                   help="Redis of `kv_connector: redis` (the shared prefix cache; default: the --register URL); "
                        "password and MAC key from $THINKROUTE_REDIS_PASSWORD and $THINKROUTE_KV_MAC_KEY")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="level of the worker's own log lines on stderr (request ids, registration; default INFO)")
    p.add_argument("--tls-cert-file", default=None, help="PEM certificate chain: serve TLS only (with --tls-key-file)")
    p.add_argument("--tls-key-file", default=None, help="PEM private key of --tls-cert-file (keep it mode 0600)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus GET /metrics (vLLM's metric names: vllm:num_requests_waiting, "
                        "vllm:kv_cache_usage_perc, vllm:time_to_first_token_seconds, ...) on --host at this port; "
                        "0 picks a free one (printed on stderr and reported by the Load RPC); default: not served")
    p.set_defaults(func=run)


#: Engine flags -> EngineConfig fields; flags left unset (None) do not override --config.
ENGINE_FLAGS = {"model": "model", "backend": "backend", "device": "device", "dtype": "dtype",
                "max_model_len": "max_model_len", "kv_cache_gib": "kv_cache_gib", "max_num_seqs": "max_num_seqs",
                "max_queue": "max_queue"}
FLAG_DEFAULTS = {"backend": "vllm", "device": "cpu", "dtype": "float32", "max_model_len": 2048, "kv_cache_gib": 1.0,
                 "max_num_seqs": 32, "max_queue": 64}


def _given(args: argparse.Namespace) -> dict:
    """The engine settings given explicitly as flags."""
    out = {field: getattr(args, flag) for flag, field in ENGINE_FLAGS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_enforce_eager", None):
        out["enforce_eager"] = False
    return out


def load_worker_config(path: str, args: argparse.Namespace):
    """(EngineConfig, RegistrationConfig | None, kv_redis_url | None) from --config FILE, flags overriding it.
    Raises ValueError naming the file and the field."""
    from pydantic import ValidationError

    from workers.config import EngineConfig
    from workers.registration import RegistrationConfig

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ValueError(f"cannot read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path} is not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of engine config fields")
    data = dict(data)
    registration = data.pop("registration", None)
    kv_redis_url = data.pop("kv_redis_url", None)
    for k in ("replicas", "addresses", "hosting", "ray"):  # a models.<name> entry of the router's config is accepted as is
        data.pop(k, None)
    data.update(_given(args))
    try:
        cfg = EngineConfig.model_validate(data)
        reg = RegistrationConfig.model_validate(registration) if registration else None
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"invalid --config {path}:\n" + "\n".join(lines)) from None
    return cfg, reg, kv_redis_url


def _registration(args: argparse.Namespace, from_file):
    """--register and its flags (overriding a file's `registration:`), or None."""
    from workers.registration import RegistrationConfig

    if not args.register and from_file is None:
        if args.pool or args.advertise or args.heartbeat_s:
            raise ValueError("--pool, --advertise and --heartbeat-s need --register (or `registration:` in --config)")
        return None
    data = from_file.model_dump() if from_file is not None else {}
    for flag, field in (("register", "url"), ("pool", "pool"), ("advertise", "advertise"), ("heartbeat_s", "heartbeat_s")):
        if getattr(args, flag) is not None:
            data[field] = getattr(args, flag)
    return RegistrationConfig.model_validate(data)


def _resolve_kv_connector(cfg, kv_redis_url: str | None, replica_id: str):
    """`kv_connector: redis` -> the Redis KV connector's transfer config on `kv_redis_url`."""
    if cfg.kv_connector != "redis":
        return cfg
    if not kv_redis_url:
        raise ValueError("kv_connector: redis needs a Redis: give --kv-redis-url (or --register, or kv_redis_url: "
                         "in --config)")
    from workers.kv.config import redis_kv_transfer_config

    from urllib.parse import urlsplit

    if urlsplit(kv_redis_url).password is not None:
        raise ValueError("--kv-redis-url must not carry a password: set $THINKROUTE_REDIS_PASSWORD")
    return cfg.model_copy(update={"kv_connector": redis_kv_transfer_config(
        kv_redis_url, replica_id=replica_id, model_id=cfg.model)})


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[worker %(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("thinkroute", "workers"):
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.addHandler(handler)
        lg.propagate = False


def run(args: argparse.Namespace) -> int:
    from workers.server import serve_worker

    _setup_logging(args.log_level)
    registration = None
    if args.config:
        if args.config_file or args.config_json:
            print("thinkroute worker: error: --config replaces --config-file and --config-json: give one",
                  file=sys.stderr)
            return 2
        try:
            cfg, file_registration, kv_redis_url = load_worker_config(args.config, args)
            registration = _registration(args, file_registration)
            args.replica_id = args.replica_id or f"{socket.gethostname()}-{os.getpid()}"
            cfg = _resolve_kv_connector(cfg, args.kv_redis_url or kv_redis_url or (registration.url if registration
                                        else None), args.replica_id)
        except ValueError as e:
            print(f"thinkroute worker: error: {e}", file=sys.stderr)
            return 2
    for flag, default in FLAG_DEFAULTS.items():  # flag defaults, now that --config had its say
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.config:
        pass  # cfg and registration come from the file (and the flags given)
    elif args.model is None and not (args.config_file or args.config_json):
        print("thinkroute worker: error: --model is required (or --config FILE naming the model)", file=sys.stderr)
        return 2
    elif args.config_file:
        try:
            text = Path(args.config_file).read_text()
        except OSError as e:
            print(f"thinkroute worker: error: cannot read --config-file {args.config_file}: {e.strerror}", file=sys.stderr)
            return 2
        cfg = EngineConfig.model_validate_json(text)
    elif args.config_json:
        cfg = EngineConfig.model_validate_json(args.config_json)
    else:
        if args.backend == "replay" and not args.replay_file:
            print("thinkroute worker: error: --backend replay needs --replay-file", file=sys.stderr)
            return 2
        cfg = EngineConfig(
            model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
            max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib, max_num_seqs=args.max_num_seqs,
            max_queue=args.max_queue, enforce_eager=not args.no_enforce_eager,
            replay=None if args.backend != "replay" else dict(
                file=args.replay_file or "", system=args.replay_system, tokens_per_s=args.tokens_per_s,
                ttft_ms=args.ttft_ms),
        )
    if not args.config:
        try:
            registration = _registration(args, None)
        except ValueError as e:
            print(f"thinkroute worker: error: {e}", file=sys.stderr)
            return 2
    from workers.errors import WorkerError

    try:
        if bool(args.tls_cert_file) != bool(args.tls_key_file):
            print("thinkroute worker: error: --tls-cert-file and --tls-key-file go together", file=sys.stderr)
            return 2
        return asyncio.run(serve_worker(cfg, args.host, args.port, args.grace, args.replica_id, args.ready_file,
                                        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                                        registration=registration,
                                        metrics_port=args.metrics_port))
    except WorkerError as e:
        print(f"thinkroute worker: error: {e}", file=sys.stderr)
        return 2
