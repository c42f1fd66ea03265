import asyncio

import pytest

from workers.errors import QueueFull
from workers.server import Admission


async def test_admission_bounds_running_and_queued():
    adm = Admission(concurrency=1, max_queue=1)
    release = asyncio.Event()
    started = []

    async def job(i):
        async with adm.slot():
            started.append(i)
            await release.wait()

    t1 = asyncio.create_task(job(1))
    await asyncio.sleep(0)
    t2 = asyncio.create_task(job(2))
    await asyncio.sleep(0)
    assert (adm.running, adm.queued) == (1, 1)
    with pytest.raises(QueueFull, match="queue is full"):
        async with adm.slot():
            pass
    release.set()
    await asyncio.gather(t1, t2)
    assert started == [1, 2] and (adm.running, adm.queued) == (0, 0)
