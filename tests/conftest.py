"""Shared fixtures: real worker processes, a real Ray Serve router, on free loopback ports.

Session-scoped workers start together (in parallel) the first time any of them is needed and
are stopped at the end of the session, whatever happened. Nothing here is a fake: the
processes are `thinkroute worker` / Ray Serve, the models are the embedded ones.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerHandle:
    """A `thinkroute worker` process on 127.0.0.1."""

    model: str
    backend: str
    port: int
    log_path: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600.0) -> "WorkerHandle":
        ready = self.log_path.with_suffix(".ready")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.model} ({self.backend}) exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.model} ({self.backend}) not ready after {timeout:.0f} s")
            time.sleep(0.3)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _reap_group(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain), then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _reap_group(self.proc.pid)
        return self.proc.returncode


def _reap_group(pgid: int) -> None:
    """Kill what is left of a worker's process group (e.g. a vLLM engine core whose parent died)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_worker(model: str, backend: str, log_dir: Path, *extra: str, port: int | None = None) -> WorkerHandle:
    """Start (not wait for) a worker process; `.wait_ready()` blocks until it serves."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{model}-{backend}-{port}.log"
    ready = log_path.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "router.cli", "worker", "--model", model, "--backend", backend,
           "--port", str(port), "--ready-file", str(ready), "--grace", "20", *extra]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    return WorkerHandle(model, backend, port, log_path, proc)


class WorkerFarm:
    """Starts the session's shared workers all at once (they load in parallel), lazily."""

    SPECS = {
        # name: (model, backend, extra flags)
        "smollm2-vllm": ("smollm2-135m", "vllm", ("--kv-cache-gib", "1")),
        "gemma3-vllm": ("gemma3-270m", "vllm", ("--kv-cache-gib", "1")),
        "smollm2-hf": ("smollm2-135m", "hf", ("--max-queue", "2")),
    }

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.handles: dict[str, WorkerHandle] = {}

    def get(self, name: str) -> WorkerHandle:
        if not self.handles:
            for key, (model, backend, extra) in self.SPECS.items():
                self.handles[key] = start_worker(model, backend, self.log_dir, *extra)
        handle = self.handles[name]
        if handle.proc.poll() is not None and not handle.log_path.with_suffix(".ready").exists():
            raise RuntimeError(f"shared worker {name} is not running")
        return handle.wait_ready()

    def stop_all(self) -> None:
        for h in self.handles.values():
            h.stop(timeout=30)


@pytest.fixture(scope="session")
def worker_farm(tmp_path_factory):
    farm = WorkerFarm(tmp_path_factory.mktemp("workers"))
    yield farm
    farm.stop_all()


@pytest.fixture(scope="session")
def smollm2_vllm(worker_farm) -> WorkerHandle:
    return worker_farm.get("smollm2-vllm")


@pytest.fixture(scope="session")
def gemma3_vllm(worker_farm) -> WorkerHandle:
    return worker_farm.get("gemma3-vllm")


@pytest.fixture(scope="session")
def smollm2_hf(worker_farm) -> WorkerHandle:
    return worker_farm.get("smollm2-hf")


@pytest.fixture(scope="session")
def worker_addresses(smollm2_vllm, gemma3_vllm) -> dict[str, list[str]]:
    """The embedded default's workers (vLLM backend): {model name: [address]}."""
    return {"smollm2-135m": [smollm2_vllm.address], "gemma3-270m": [gemma3_vllm.address]}


@pytest.fixture(scope="module")
def openai_base_url(worker_addresses):
    """The embedded default's router on Ray Serve's HTTP proxy (a local Ray per module): the OpenAI base URL."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from router.config import load_config
    from router.serve_app import build_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port))
        serve.run(build_app(load_config(overrides={"router.request_timeout_s": 120}), worker_addresses),
                  name="thinkroute", route_prefix="/")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def worker_log_dir(tmp_path) -> Path:
    return tmp_path / "workers"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from workers.convert import materialize
    from workers.models import resolve_model

    return materialize(resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    from workers.convert import materialize
    from workers.models import resolve_model

    return materialize(resolve_model("gemma3-270m"))


#: Integration modules that start their own engines run first, each releasing them at its end,
#: before the shared WorkerFarm starts: peak memory stays within a 24 GiB machine.
_RUN_FIRST = ("test_vllm_engine.py", "test_redis_kv.py", "test_sessions.py")


def _order(item) -> tuple[int, int]:
    path = str(item.fspath)
    if "/unit/" in path:
        return (0, 0)
    for i, name in enumerate(_RUN_FIRST):
        if path.endswith(name):
            return (1, i)
    return (2, 0)


def pytest_collection_modifyitems(config, items):
    """Unit tests first, then self-contained integration modules, then the shared-worker ones.
    GPU tests are skipped, visibly, when no CUDA device is present."""
    items.sort(key=_order)  # stable: order within a module is kept
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine); run on a GPU host with `pytest -m gpu`")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
