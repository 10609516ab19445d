"""Priorities and per-queue concurrency in one worker, on a real database.

`@handler(..., priority=N)`: free slots go to the higher queue first. `@handler(..., concurrency=N)`:
at most N of that queue's deliveries run at once; the worker's other slots serve other queues.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from db.connect import Target
from queues import enqueue, pgmq
from tests.integration.test_cli import assert_one_line_error
from tests.support.fixtures import BurstWorker
from tests.support.helpers import Peak, job, make_worker, send
from worker import Context, handler
from worker.cli import main
from worker.registry import Registry

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "examples"


def run_until(worker: Any, done: threading.Event, *, timeout: float = 20) -> None:
    """Run a non-burst worker until `done`, then stop it warm."""

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while not done.is_set() and not task.done():
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(go(), timeout))


def test_urgent_messages_start_before_the_bulk_backlog(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Two slots, twenty slow bulk jobs sent first, then three urgent ones: the urgent three start first.

    With both queues at one priority the rotation starts with `bulk` (the worker's first queue) and
    its first read takes both slots.
    """
    peak = Peak()

    @handler("bulk", registry=reg)
    async def bulk(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("bulk")
        await asyncio.sleep(0.02)
        peak.leave("bulk")

    @handler("urgent", priority=10, registry=reg)
    async def urgent(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("urgent")
        peak.leave("urgent")

    send(conn, "bulk", *({"i": i} for i in range(20)))
    send(conn, "urgent", *({"i": i} for i in range(3)))
    burst_worker(reg, queues=("bulk", "urgent"), concurrency=2)
    assert peak.starts[:3] == ["urgent"] * 3
    assert peak.starts.count("bulk") == 20


def test_same_priority_keeps_the_rotation(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The control for the test above: one priority, the first read goes to `bulk` and takes the
    half of the four slots a read may take, and the next one goes to `urgent`."""
    peak = Peak()

    @handler("bulk", registry=reg)
    async def bulk(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("bulk")
        await asyncio.sleep(0.02)
        peak.leave("bulk")

    @handler("urgent", registry=reg)
    async def urgent(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("urgent")
        peak.leave("urgent")

    send(conn, "bulk", *({"i": i} for i in range(6)))
    send(conn, "urgent", *({"i": i} for i in range(3)))
    burst_worker(reg, queues=("bulk", "urgent"), concurrency=4)
    assert peak.starts[:4] == ["bulk", "bulk", "urgent", "urgent"]
    assert sorted(peak.starts) == ["bulk"] * 6 + ["urgent"] * 3


@pytest.mark.parametrize("listen", [False, True])
def test_an_urgent_message_sent_while_bulk_jobs_hold_every_slot_takes_the_first_slot_that_frees(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, listen: bool
) -> None:
    """Both slots held by bulk jobs when the urgent message comes: it starts next, before the backlog.

    Polling every 30 s: the read that finds it is the one a freed slot makes, whether or not the
    worker listens (a notification while every slot is busy wakes nothing, and is not needed).
    """
    peak = Peak()
    holding = threading.Event()
    release = threading.Event()
    done = threading.Event()

    @handler("bulk", registry=reg)
    async def bulk(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("bulk")
        if peak.starts.count("bulk") == 2:
            holding.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        peak.leave("bulk")

    @handler("urgent", priority=1, registry=reg)
    async def urgent(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("urgent")
        peak.leave("urgent")
        done.set()

    send(conn, "bulk", *({"i": i} for i in range(10)))
    worker = make_worker(  # urgent, bulk: by rotation alone the second read would start with bulk
        target,
        reg,
        burst=False,
        queues=("urgent", "bulk"),
        concurrency=2,
        listen=listen,
        poll_interval=timedelta(seconds=30),
    )

    def feed() -> None:
        assert holding.wait(10)
        with psycopg.connect(target.url, autocommit=True) as other:
            send(other, "urgent", {"now": True})
        time.sleep(0.3)  # the worker is waiting for a slot, not reading
        release.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    run_until(worker, done)
    feeder.join()
    assert peak.starts[:3] == ["bulk", "bulk", "urgent"]


def test_the_guard_gives_a_low_queue_its_share_while_the_high_one_has_a_backlog(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """priority_share=0.5, one slot: every other delivery is the low queue's; strict (0): none of them."""
    for share, expected in ((0.5, ["high", "low"] * 5), (0.0, ["high"] * 10)):
        peak = Peak()
        registry = Registry()
        handler("high", priority=5, registry=registry)(counting(peak, "high"))
        handler("low", registry=registry)(counting(peak, "low"))
        send(conn, "high", *({"i": i} for i in range(12)))
        send(conn, "low", *({"i": i} for i in range(12)))
        burst_worker(registry, queues=("high", "low"), concurrency=1, priority_share=share)
        assert peak.starts[:10] == expected, share
        assert sorted(peak.starts) == ["high"] * 12 + ["low"] * 12


def counting(peak: Peak, queue: str) -> Any:
    """An async handler that only notes its start."""

    async def count(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter(queue)
        peak.leave(queue)

    return count


def test_per_queue_concurrency_is_never_exceeded_and_the_other_slots_serve_other_queues(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Six slots, `capped` at two: it never runs more than two at once, while `free` runs four beside it."""
    peak = Peak()

    @handler("capped", concurrency=2, priority=1, registry=reg)
    async def capped(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("capped")
        await asyncio.sleep(0.05)
        peak.leave("capped")

    @handler("free", registry=reg)
    async def free(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("free")
        await asyncio.sleep(0.05)
        peak.leave("free")

    send(conn, "capped", *({"i": i} for i in range(12)))
    send(conn, "free", *({"i": i} for i in range(12)))
    burst_worker(reg, queues=("capped", "free"), concurrency=6)
    assert peak.peak["capped"] == 2
    assert peak.peak["free"] >= 4  # the slots `capped` may not use
    assert sorted(peak.starts) == ["capped"] * 12 + ["free"] * 12


def test_a_capped_def_queue_respects_both_its_cap_and_the_threads(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """threads=3: a `def` queue capped at one runs one at a time; another `def` queue gets the two left."""
    peak = Peak()

    @handler("one_at_a_time", concurrency=1, priority=1, registry=reg)
    def one_at_a_time(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("one_at_a_time")
        time.sleep(0.05)
        peak.leave("one_at_a_time")

    @handler("threads_left", registry=reg)
    def threads_left(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("threads_left")
        time.sleep(0.05)
        peak.leave("threads_left")

    send(conn, "one_at_a_time", *({"i": i} for i in range(8)))
    send(conn, "threads_left", *({"i": i} for i in range(8)))
    worker = burst_worker(reg, queues=("one_at_a_time", "threads_left"), concurrency=10, threads=3)
    assert peak.peak["one_at_a_time"] == 1
    assert peak.peak["threads_left"] == 2  # never the cap's thread: with it, three at once
    assert worker.executor.busy == 0


def test_a_capped_queue_starts_its_next_job_when_its_slot_frees_not_at_the_next_poll(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """concurrency=1, other slots free, polling every 30 s: the second job starts as the first ends."""
    spans: list[tuple[float, float]] = []
    finished = threading.Event()

    @handler("single", concurrency=1, registry=reg)
    async def single(payload: dict[str, Any], ctx: Context) -> None:
        start = time.monotonic()
        await asyncio.sleep(1.5)  # past the first backed-off re-reads
        spans.append((start, time.monotonic()))
        if len(spans) == 2:
            finished.set()

    send(conn, "single", {}, {})
    worker = make_worker(target, reg, burst=False, listen=False, poll_interval=timedelta(seconds=30))
    run_until(worker, finished)
    [(_, first_end), (second_start, _)] = spans
    assert 0 <= second_start - first_end < 0.3  # one at a time, the second as soon as the first ended


@pytest.mark.parametrize("value", ["-0.1", "0.9", "lots"])
def test_a_bad_priority_share_is_a_one_line_error(db_url: str, value: str) -> None:
    """PGMQ_WORKER_PRIORITY_SHARE outside 0..0.5 stops `pgmq-worker run` with a message, not a traceback."""
    result = CliRunner().invoke(
        main, ["run", "--burst"], env={"DATABASE_URL": db_url, "PGMQ_WORKER_PRIORITY_SHARE": value}
    )
    assert_one_line_error(result, "invalid setting", "priority_share")


def test_the_reports_example_serves_both_queues_with_one_function(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, burst_worker: BurstWorker
) -> None:
    """docs/how-to/examples/reports.py: one function on report_urgent (priority 10) and report_bulk."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    registry = Registry.from_modules(["reports"])
    assert registry.queues() == ["report_bulk", "report_urgent"]
    urgent, bulk = registry.get("report_urgent"), registry.get("report_bulk")
    assert urgent.fn is bulk.fn
    assert (urgent.priority, urgent.concurrency, bulk.priority, bulk.concurrency) == (10, None, 0, 4)
    reports = importlib.import_module("reports")
    for queue in registry.queues():
        pgmq.ensure_queue(conn, queue)
    first = enqueue(conn, reports.REPORT_BULK, {"account_id": "a1"})
    second = enqueue(conn, reports.REPORT_URGENT, {"account_id": "a2"})
    burst_worker(registry)
    assert job(conn, "report_bulk", first.msg_id)["result"] == {"account_id": "a1", "queue": "report_bulk"}
    assert job(conn, "report_urgent", second.msg_id)["result"] == {
        "account_id": "a2",
        "queue": "report_urgent",
    }
