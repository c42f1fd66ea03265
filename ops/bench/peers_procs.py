"""Processes of the peers benchmark: start each served system in its own process group, wait until it
answers, measure its memory, and tear everything down (also on failure).

`Procs` owns every process the benchmark starts. `Procs.close()` stops them in reverse order: SIGTERM to
the process group, a grace period, then SIGKILL to the group and to every descendant seen while it ran
(a Ray raylet or a vLLM engine core may have left the group), and finally to any process whose command
line names one of the run's private marker strings (each Ray cluster's temp dir). It is idempotent and
never raises, so `try/finally` and signal handlers can both call it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence


@dataclass
class Proc:
    """One started system (its root process; its group holds the rest)."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    seen: set[int] = field(default_factory=set)  # pids of descendants observed while it ran

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def remember_children(self) -> None:
        """Record the current descendants (for the teardown sweep)."""
        import psutil

        try:
            self.seen.update(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass


class StartFailed(RuntimeError):
    """A system did not come up; the message names it and ends with its log's tail."""


class Procs:
    """Starts and owns the benchmark's processes. Use as a context manager or call close()."""

    def __init__(self, log_dir: Path, markers: Sequence[str] = ()) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.markers = list(markers)  # cmdline substrings that identify this run's stray processes
        self._closed = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        """Start `argv` in a new session (its own process group), output to <log_dir>/<name>.log."""
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        print(f"  starting {name}: {' '.join(argv[:3])} ... (log {log_path})", file=sys.stderr, flush=True)
        p = subprocess.Popen(list(argv), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=full_env,
                             cwd=cwd, start_new_session=True)
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def wait_until(self, proc: Proc, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll `ready()` until it is true; StartFailed if the process exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            proc.remember_children()
            if not proc.alive():
                raise StartFailed(f"{proc.name} exited with {proc.proc.returncode} while starting:\n{proc.tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise StartFailed(f"{proc.name} did not come up within {timeout_s:.0f} s:\n{proc.tail()}")
            time.sleep(0.5)

    def close(self) -> None:
        """Stop everything started here, newest first; never raises."""
        if self._closed:
            return
        self._closed = True
        for p in reversed(self.procs):
            try:
                stop_group(p)
            except Exception as e:  # noqa: BLE001 - teardown must go on
                print(f"  teardown of {p.name}: {e}", file=sys.stderr)
        for pid in stray_pids(self.markers):
            _kill(pid)


def stop_group(p: Proc, grace_s: float = 20.0) -> None:
    """SIGTERM the process group, wait up to `grace_s`, then SIGKILL the group and every remembered child."""
    p.remember_children()
    if p.alive():
        _signal_group(p.proc.pid, signal.SIGTERM)
        try:
            p.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(p.proc.pid, signal.SIGKILL)
    if p.proc.poll() is None:
        p.proc.kill()
    p.proc.wait()
    for pid in sorted(p.seen):
        _kill(pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stray_pids(markers: Sequence[str]) -> list[int]:
    """Pids (not this process) whose command line contains one of `markers` (empty markers: none)."""
    markers = [m for m in markers if m]
    if not markers:
        return []
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.info["pid"] != os.getpid() and any(m in cmd for m in markers):
            out.append(p.info["pid"])
    return out


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - loopback URLs we built
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def tree_memory(root_pids: Sequence[int], extra_pids: Sequence[int] = ()) -> dict:
    """RSS and PSS (MiB) of the given processes and all their descendants, each process counted once, and the
    addresses they listen on (`non_loopback_listening`: any that is not 127.x or ::1)."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for pid in [*root_pids, *extra_pids]:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for q in [p, *p.children(recursive=True)]:
            procs[q.pid] = q
    rss = pss = 0
    rows = []
    listen: set[str] = set()
    for pid, q in procs.items():
        try:
            mi = q.memory_full_info()
            name = " ".join(q.cmdline()[:3])[:120] or q.name()
            listen.update(f"{c.laddr.ip}:{c.laddr.port}" for c in q.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += mi.rss
        pss += mi.pss
        rows.append({"pid": pid, "cmd": name, "rss_mib": round(mi.rss / 2**20, 1), "pss_mib": round(mi.pss / 2**20, 1)})
    rows.sort(key=lambda r: -r["pss_mib"])
    return {"processes": len(rows), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "detail": rows,
            "listening": sorted(listen),
            "non_loopback_listening": sorted(a for a in listen if not a.startswith(("127.", "::1:")))}
