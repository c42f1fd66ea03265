"""The peers benchmark's pure parts (ops/bench/peers_stats.py) and its teardown (ops/bench/peers_procs.py).

The teardown test starts real, cheap processes (sleep) and checks that none survives `Procs.close()`,
including one that left the process group (setsid), as a Ray raylet or a vLLM engine core may."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops" / "bench"))

import peers_stats as st  # noqa: E402
from peers_procs import Procs, StartFailed  # noqa: E402


@pytest.mark.parametrize("xs", [[5.0], [1.0, 2.0], [3.0, 1.0, 2.0, 10.0], list(np.random.default_rng(0).random(37))])
@pytest.mark.parametrize("q", [0, 50, 95, 100])
def test_percentile_matches_numpy(xs, q):
    assert st.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_rejects_empty_and_bad_q():
    with pytest.raises(ValueError):
        st.percentile([], 50)
    with pytest.raises(ValueError):
        st.percentile([1.0], 101)


def test_interleaved_order_rotates_and_keeps_every_system():
    names = ["a", "b", "c"]
    orders = [st.interleaved_order(names, i) for i in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert st.interleaved_order(names, 3) == names
    assert [o[0] for o in orders] == names  # each system leads one round in three


def _cell(ms, tokens=None):
    return {"ms": ms, "tokens": tokens or [1] * len([m for m in ms if m is not None]),
            "errors": sum(m is None for m in ms)}


def test_latency_rows_added_and_paired_against_vllm_and_worker():
    lat = {
        st.BASELINE: {1: _cell([100.0, 110.0, 120.0])},
        "litellm": {1: _cell([130.0, 150.0, 160.0])},
        st.WORKER: {1: _cell([90.0, 100.0, 115.0])},
        st.HEADLINE: {1: _cell([105.0, None, 126.0])},
    }
    rows = {r["system"]: r for r in st.latency_rows(lat, [1])}
    assert rows["litellm"]["added_p50_ms"] == pytest.approx(40.0)
    assert rows["litellm"]["paired_added_ms"] == pytest.approx(40.0)  # median of 30, 40, 40
    head = rows[st.HEADLINE]
    assert head["errors"] == 1 and head["n"] == 2
    assert head["paired_added_ms"] == pytest.approx(5.5)  # rounds 0 and 2 only: 5, 6
    assert head["over_worker_paired_ms"] == pytest.approx(13.0)  # 15, 11
    assert rows["litellm"]["over_worker_paired_ms"] is None  # only thinkroute's arms run on the worker


def _rows(ours, lite, route):
    return [{"system": s, "max_tokens": 1, "added_p50_ms": v} for s, v in
            ((st.HEADLINE, ours), ("litellm", lite), ("routellm", route))]


def _thr(**rps):
    return {k.replace("_", "-"): {"requests_per_s": v} for k, v in rps.items()}


def test_targets_met_and_not_met():
    engine = {st.WORKER: {"tokens_per_s": 96.0, "concurrency": 32}, st.BASELINE: {"tokens_per_s": 100.0}}
    thr = _thr(thinkroute_http=10.0, vllm_serve=9.0, litellm=8.0)
    t = st.targets(_rows(5.0, 6.0, 7.0), thr, engine, [1])
    assert [x.met for x in t] == [True, True, True]
    t = st.targets(_rows(6.5, 6.0, 7.0), _thr(thinkroute_http=8.9, vllm_serve=9.0), {**engine, st.WORKER: {"tokens_per_s": 94.9}}, [1])
    assert [x.met for x in t] == [False, False, False]
    assert "94.9 vs 100.0" in t[2].detail


def test_targets_not_measured_when_a_system_is_missing():
    t = st.targets(_rows(5.0, None, 7.0), {}, {}, [1])
    assert [x.met for x in t] == [None, None, None]
    assert st.combine([True, None]) is None and st.combine([None, False]) is False and st.combine([]) is None


def test_throughput_summary_counts_per_window():
    s = st.throughput_summary([100.0, 200.0, 300.0, 400.0], [16, 16, 16, 8], wall_s=2.0, errors=1, concurrency=64)
    assert s["requests_per_s"] == 2.0 and s["tokens_per_s"] == 28.0 and s["errors"] == 1
    assert s["p50_ms"] == 250.0


def test_markdown_has_every_table():
    report = {"latency_rows": st.latency_rows({st.BASELINE: {1: _cell([100.0])}}, [1]),
              "throughput": {st.BASELINE: {**st.throughput_summary([1.0], [1], 1.0, 0, 64), "max_tokens": 16}},
              "engine": {st.BASELINE: {"concurrency": 32, "max_tokens": 64, "requests": 1, "tokens_per_s": 1.0,
                                       "ttft_p50_ms": 1.0, "ttft_p95_ms": None, "errors": 0}},
              "memory": {st.BASELINE: {"processes": 2, "rss_mib": 1.0, "pss_mib": 1.0}},
              "targets": [st.Target("x", None, "not measured").__dict__]}
    md = st.markdown(report)
    assert sum(line.startswith("|---") for line in md.splitlines()) == 5 and "not measured" in md and "–" in md


def _descendant_sleepers(marker: str) -> list[int]:
    """Pids of `sleep N<marker>` processes (not the bash that started them)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0] == "sleep" and marker in " ".join(p.info["cmdline"])]


def test_close_kills_the_group_and_children_that_left_it(tmp_path):
    marker = f"{time.time_ns() % 10**9}"
    procs = Procs(tmp_path)
    # A child in the group, and one that starts its own session (leaves the group), like a daemon would.
    p = procs.start("sleepers", ["bash", "-c", f"sleep 1{marker} & setsid sleep 2{marker} & wait"])
    procs.wait_until(p, lambda: len(_descendant_sleepers(marker)) == 2, 10)
    assert len(_descendant_sleepers(marker)) == 2
    procs.close()
    time.sleep(0.2)
    assert _descendant_sleepers(marker) == []
    assert not p.alive()
    procs.close()  # idempotent


def test_close_sweeps_marked_strays_and_reports_start_failures(tmp_path):
    import subprocess

    marker = f"9{time.time_ns() % 10**8}"
    stray = subprocess.Popen(["sleep", marker], start_new_session=True)  # not started through Procs
    procs = Procs(tmp_path, markers=[marker])
    dead = procs.start("dies", ["bash", "-c", "echo boom; exit 3"])
    with pytest.raises(StartFailed, match="(?s)dies exited with 3.*boom"):
        procs.wait_until(dead, lambda: False, 10)
    procs.close()
    assert stray.wait(5) is not None
