"""`threads`: how many `def` handlers run at once, apart from `concurrency` (all handlers at once)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg

from db.connect import Target
from tests.support.fixtures import BurstWorker
from tests.support.helpers import make_worker, send
from worker import Context, handler
from worker.registry import Registry
from worker.settings import WorkerSettings


def test_the_defaults_run_many_coroutines_and_fewer_threads() -> None:
    """100 handlers at once, of which at most 20 `def` handlers (threads)."""
    settings = WorkerSettings()
    assert (settings.concurrency, settings.threads) == (100, 20)


def test_threads_bound_def_handlers_while_async_ones_use_the_other_slots(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """threads=2, concurrency=6: never more than two `def` handlers at once, async ones beside them.

    The first read (the `def` queue first) takes two messages for the threads and four for the
    coroutines, instead of six that would wait in the thread pool holding every slot.
    """
    lock = threading.Lock()
    sync_running = 0
    sync_peak = 0
    sync_ends: list[float] = []
    async_starts: list[float] = []
    done: list[str] = []

    @handler("in_threads", registry=reg)
    def in_threads(payload: dict[str, Any], ctx: Context) -> None:
        nonlocal sync_running, sync_peak
        with lock:
            sync_running += 1
            sync_peak = max(sync_peak, sync_running)
        time.sleep(0.2)
        with lock:
            sync_running -= 1
            sync_ends.append(time.monotonic())
            done.append(f"sync{payload['i']}")

    @handler("coroutines", registry=reg)
    async def coroutines(payload: dict[str, Any], ctx: Context) -> None:
        async_starts.append(time.monotonic())
        await asyncio.sleep(0.2)
        done.append(f"async{payload['i']}")

    send(conn, "in_threads", *({"i": i} for i in range(8)))
    send(conn, "coroutines", *({"i": i} for i in range(8)))
    worker = burst_worker(reg, queues=("in_threads", "coroutines"), concurrency=6, threads=2)
    assert sync_peak == 2
    assert sum(1 for at in async_starts if at < min(sync_ends)) == 4
    assert sorted(done) == sorted([f"sync{i}" for i in range(8)] + [f"async{i}" for i in range(8)])
    assert worker.executor.busy == 0


def test_a_def_queue_waiting_for_a_thread_starts_its_next_job_when_one_frees_not_at_the_next_poll(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """One thread, polling every 30 s: the second job starts as the first returns."""
    spans: list[tuple[float, float]] = []
    finished = threading.Event()

    @handler("one_thread", registry=reg)
    def one_thread(payload: dict[str, Any], ctx: Context) -> None:
        start = time.monotonic()
        time.sleep(1.5)  # past the first backed-off re-reads (0.02 s doubling)
        spans.append((start, time.monotonic()))
        if len(spans) == 2:
            finished.set()

    send(conn, "one_thread", {}, {})
    worker = make_worker(
        target, reg, burst=False, threads=1, listen=False, poll_interval=timedelta(seconds=30)
    )

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while not finished.is_set():
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(go(), 20))
    [(_, first_end), (second_start, _)] = spans
    # Without waking on the freed thread, the backed-off re-reads (0.02 s doubling up to the poll
    # interval) come at 1.26 s and 2.54 s: the second job would wait a second.
    assert second_start - first_end < 0.3
