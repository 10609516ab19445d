"""Batched acks: many successes per statement, each still guarded by its own lease."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from db.connect import Target, async_pool
from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import ack_later, captured, job, job_or_none, rows
from worker import Context, Registry, handler
from worker.settle import Acks
from worker.store import deliveries
from worker.store.deliveries import Message


def test_a_busy_worker_acks_many_per_statement(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """300 quick successes are acked in far fewer statements; every message is gone, every job done."""

    @handler("quick", registry=reg)
    async def quick(payload: dict[str, Any], ctx: Context) -> dict[str, int]:
        return {"n": payload["n"] * 2}

    pgmq.ensure_queue(conn, "quick")
    ids = pgmq.send_batch(conn, "quick", [{"n": i} for i in range(300)])
    worker = burst_worker(reg, concurrency=50)
    assert rows(conn, "quick") == []
    assert worker.settle.acks.acked == 300
    assert worker.settle.acks.batches < 150
    for i, msg_id in enumerate(ids[:5]):
        row = job(conn, "quick", msg_id)
        assert (row["status"], row["result"], row["progress"]) == ("succeeded", {"n": i * 2}, 100)


def test_a_batch_acks_only_the_deliveries_still_held(target: Target, conn: psycopg.Connection[Any]) -> None:
    """In one batch, a delivery whose lease passed to another reader is not acked; the others are."""
    pgmq.ensure_queue(conn, "held")
    pgmq.send_batch(conn, "held", [{"i": 1}, {"i": 2}])

    async def go() -> list[bool]:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        acks = Acks(pool)
        acks.start()
        try:
            async with pool.connection() as aconn:
                first, second = await deliveries.read(aconn, "held", 30, 2)
            # The second delivery's lease is gone: someone else read it again (read_ct moved on).
            conn.execute("UPDATE pgmq.q_held SET read_ct = read_ct + 1 WHERE msg_id = %s", (second.msg_id,))
            return list(await asyncio.gather(ack_later(acks, first, "a"), ack_later(acks, second, "b")))
        finally:
            await acks.close()
            await pool.close()

    assert asyncio.run(go()) == [True, False]
    [left] = rows(conn, "held")
    assert left["message"] == {"i": 2}
    assert job_or_none(conn, "held", left["msg_id"]) is None  # not ours: nothing written for it
    assert [r[0] for r in conn.execute("SELECT status FROM pgmq_worker.jobs").fetchall()] == ["succeeded"]


def test_acks_surface_database_errors_to_each_waiter(target: Target, conn: psycopg.Connection[Any]) -> None:
    """A failing batch fails every waiter (the settle loop retries them); nothing is acked."""
    pgmq.ensure_queue(conn, "gone")
    pgmq.send_batch(conn, "gone", [{"i": 1}])

    async def go() -> list[BaseException | bool]:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        acks = Acks(pool)
        acks.start()
        try:
            async with pool.connection() as aconn:
                [message] = await deliveries.read(aconn, "gone", 30, 1)
            ghost = Message("nonexistent", 1, 1, message.enqueued_at, message.vt, {})
            return list(
                await asyncio.gather(
                    ack_later(acks, ghost, None), ack_later(acks, message, 1), return_exceptions=True
                )
            )
        finally:
            await acks.close()
            await pool.close()

    ghost_result, real = asyncio.run(go())
    assert isinstance(ghost_result, psycopg.errors.UndefinedTable)
    assert real is True  # another queue's batch is unaffected


def test_a_batched_ack_that_fails_is_retried_and_the_success_logged(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The handler's task ends when it hands its success to Acks; if that batch fails (the pool's
    connections were cut), the settle loop writes it again and the job is still logged and done."""

    @handler("cut", registry=reg)
    async def cut(payload: dict[str, Any], ctx: Context) -> dict[str, bool]:
        # Every connection of the worker dies, busy ones too: one busy at this instant (the pauses'
        # re-check, the pruner) would otherwise go back to the pool alive and carry the ack, as it
        # did once under load. The ack will check out a dead one.
        with psycopg.connect(target.url, autocommit=True) as killer:
            killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name = %s",
                (target.application_name,),
            )
        return {"ok": True}

    pgmq.ensure_queue(conn, "cut")
    [msg_id] = pgmq.send_batch(conn, "cut", [{"i": 1}])
    with captured() as logs:
        worker = burst_worker(reg)
    events = [(e["event"], e.get("msg_id")) for e in logs]
    assert ("job.settle_failed", msg_id) in events
    assert ("job.succeeded", msg_id) in events
    assert rows(conn, "cut") == []
    assert job(conn, "cut", msg_id)["status"] == "succeeded"
    assert worker.settle.acks.pending == 0
