"""SideTasks.stop ends every long task, even one whose first cancel was swallowed."""

from __future__ import annotations

import asyncio

from worker.errors import SideTaskFailed
from worker.side_tasks import STOP_RECANCEL_S, SideTasks


def test_stop_ends_a_task_that_swallowed_its_first_cancel() -> None:
    """A heartbeat whose pool checkout ate the CancelledError sleeps on; stop() cancels it again
    (the registry's heartbeat kept a worker from stopping for over 15 s this way)."""
    cancels: list[int] = []
    failures: list[SideTaskFailed] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  as a swallowed cancel

    async def go() -> float:
        stopping = asyncio.Event()
        tasks = SideTasks(stopping, failures.append)
        task = tasks.start(stubborn(), "stubborn")
        await asyncio.sleep(0)
        stopping.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(tasks.stop(), timeout=STOP_RECANCEL_S * 5)
        assert task.cancelled()
        return loop.time() - started

    took = asyncio.run(go())
    assert len(cancels) == 2
    assert took < STOP_RECANCEL_S * 3
    assert failures == []
