"""ops/load/loadgen.py: arrivals are bounded, the loop is open, only loopback is loaded (pure logic)."""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops" / "load"))

from loadgen import Outcome, arrivals, require_loopback, run_once  # noqa: E402


def test_poisson_arrivals_are_bounded_in_count_and_time_and_have_the_rate():
    a = arrivals("poisson", 50.0, 20.0, 10_000, seed=3)
    assert all(0 < t < 20.0 for t in a) and a == sorted(a)
    assert 900 < len(a) < 1100  # ~ rate x duration
    assert len(arrivals("poisson", 50.0, 20.0, 30)) == 30


def test_bursts_send_groups_at_once():
    a = arrivals("burst", 0, 25.0, 1000, burst_size=8, burst_every_s=10.0)
    assert a == [0.0] * 8 + [10.0] * 8 + [20.0] * 8
    assert len(arrivals("burst", 0, 25.0, 10, burst_size=8, burst_every_s=10.0)) == 10


@pytest.mark.parametrize("host", ["8.8.8.8", "10.0.0.1", "192.168.1.1"])
def test_only_loopback_is_loaded(host):
    with pytest.raises(SystemExit, match="not a loopback"):
        require_loopback(host)
    require_loopback("127.0.0.1")


async def test_the_loop_is_open_a_slow_server_does_not_slow_the_arrivals():
    sent: list[float] = []
    start = time.perf_counter()

    async def slow(i: int) -> Outcome:
        sent.append(time.perf_counter() - start)
        await asyncio.sleep(0.5)
        return Outcome(0.0, 500.0, "OK" if i % 2 else "RESOURCE_EXHAUSTED", retry_after="" if i % 2 else "1")

    schedule = [0.0, 0.05, 0.1, 0.15]
    r = await run_once(slow, schedule, target="fake", arrival="poisson", rate=20, duration_s=0.2, slo_ms=1000)
    assert max(sent) < 0.4, sent  # all sent before the first answered
    assert r.sent == 4 and r.statuses == {"OK": 2, "RESOURCE_EXHAUSTED": 2} and r.retry_after == {"1": 2}
    assert r.wall_s < 1.0
