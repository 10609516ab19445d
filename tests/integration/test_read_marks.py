"""Read marks (worker/store/read_marks.py): reads start above the last ids read, and a message made
visible again below the mark (a retry, a released or expired lease) is still read."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from db.connect import Target, async_pool
from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, rows
from worker import Backoff, Context, Registry, handler
from worker.store import deliveries
from worker.store.read_marks import ReadMarks

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


def test_a_retry_below_the_mark_is_read_again(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The lowest ids fail once while the worker reads on above them: each is retried and succeeds."""
    attempts: dict[int, list[int]] = {}

    @handler("marked", registry=reg, backoff=FAST)
    async def marked(payload: dict[str, Any], ctx: Context) -> None:
        attempts.setdefault(payload["i"], []).append(ctx.attempt)
        if payload["i"] < 3 and ctx.attempt == 1:
            raise RuntimeError("once")

    pgmq.ensure_queue(conn, "marked")
    pgmq.send_batch(conn, "marked", [{"i": i} for i in range(400)])
    burst_worker(reg, concurrency=10)
    assert {i: attempts[i] for i in range(3)} == {0: [1, 2], 1: [1, 2], 2: [1, 2]}
    assert sorted(attempts) == list(range(400))
    assert rows(conn, "marked") == []
    assert dead(conn, "marked") == []


def test_a_marked_read_skips_below_the_mark_until_it_lapses(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """A lease released below the mark is not read from the mark, and is read once the mark lapses."""
    pgmq.ensure_queue(conn, "lapsing")
    pgmq.send_batch(conn, "lapsing", [{"i": i} for i in range(4)])

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    marks = ReadMarks(refresh_s=1.0, clock=clock)

    async def go() -> tuple[list[int], list[int], list[int]]:
        pool = async_pool(target, min_size=1, max_size=1)
        await pool.open()
        try:
            async with pool.connection() as aconn:
                first = await deliveries.read(aconn, "lapsing", 30, 2, marks=marks)
                await deliveries.release(aconn, "lapsing", [(m.msg_id, m.read_ct) for m in first])
                above = await deliveries.read(aconn, "lapsing", 30, 10, marks=marks)
                clock.now += 1.5
                again = await deliveries.read(aconn, "lapsing", 30, 10, marks=marks)
                return [m.msg_id for m in first], [m.msg_id for m in above], [m.msg_id for m in again]
        finally:
            await pool.close()

    first, above, again = asyncio.run(go())
    assert len(first) == 2
    assert len(above) == 2 and min(above) > max(first)  # the released two are below the mark
    assert again == first  # the mark lapsed: read from the start, they are found
