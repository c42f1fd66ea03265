"""`thinkroute serve` as a child process, for the commands and benchmarks that stand a stack up themselves.

    proc, address = start_serve(config_path, out_dir)   # waits for the ready file; logs to out_dir/serve.log
    stop_serve(proc)                                    # SIGTERM to its process group, SIGKILL after 120 s

The child runs in a session of its own, so stopping it stops every worker, Redis and Ray process it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_serve(config: Path, out: Path, timeout_s: float = 600.0, env: dict[str, str] | None = None
                ) -> tuple[subprocess.Popen, str]:
    """Start `thinkroute serve --config CONFIG`, wait until it is ready (at most `timeout_s` seconds) and return
    the process and the router's gRPC address. Raises SystemExit naming the log when it exits or times out."""
    ready = out / "ready"
    ready.unlink(missing_ok=True)
    log = open(out / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(config), "--ready-file", str(ready)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.monotonic()
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
            stop_serve(proc)
            raise SystemExit(f"the stack did not start (see {out / 'serve.log'})")
        time.sleep(2)
    print(f"stack up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return proc, ready.read_text().strip()


def stop_serve(proc: subprocess.Popen) -> None:
    """Stop the stack started by `start_serve`: SIGTERM to its process group, then SIGKILL after 120 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
