"""Polling backs off: right after a read that found work the next one comes soon; idle, once an interval."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg

from queues import pgmq
from tests.helpers import make_worker
from worker import Context, Registry, handler
from worker.wakeup import REPOLL_S, Wakeup


def test_the_wait_starts_short_after_work_and_doubles_to_the_poll_interval() -> None:
    wakeup = Wakeup(poll_interval=1.0)
    assert wakeup.next_wait(found=False) == 1.0  # a fresh worker with nothing: the interval
    assert wakeup.next_wait(found=True) == REPOLL_S
    empty = [wakeup.next_wait(found=False) for _ in range(8)]
    assert empty == [0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0]
    assert wakeup.next_wait(found=True) == REPOLL_S  # work again: short again
    assert Wakeup(poll_interval=0.01).next_wait(found=True) == 0.01  # never longer than the interval


def test_a_polling_worker_picks_up_the_next_message_long_before_its_poll_interval(
    target: Any, conn: psycopg.Connection[Any]
) -> None:
    """No LISTEN and a 10 s poll interval: a message sent just after another was handled still starts
    within a fraction of the interval, because the worker looks again soon after finding work."""
    reg = Registry()
    started: dict[str, float] = {}

    @handler("polled", registry=reg)
    async def polled(payload: dict[str, Any], ctx: Context) -> None:
        started[payload["name"]] = time.monotonic()

    pgmq.ensure_queue(conn, "polled")
    pgmq.send(conn, "polled", {"name": "first"})
    worker = make_worker(target, reg, burst=False, listen=False, poll_interval=timedelta(seconds=10))

    async def go() -> float:
        task = asyncio.create_task(worker.run())
        while "first" not in started:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the worker has settled the first and is waiting
        sent = time.monotonic()
        await asyncio.to_thread(pgmq.send, conn, "polled", {"name": "second"})
        while "second" not in started and time.monotonic() - sent < 15:
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 15)
        return started.get("second", float("inf")) - sent

    waited = asyncio.run(go())
    assert waited < 5, f"picked up after {waited:.2f} s: the worker waited out its 10 s poll interval"
