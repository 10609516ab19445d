"""The worker keeps each message's job row current, in the same statement as the read or settle."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import psycopg

from db.connect import Target
from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import job, make_worker, stop_once_started
from worker import Backoff, Context, Registry, handler


def test_a_finished_job_is_succeeded_with_its_result(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A message sent with plain SQL gets a job row when first read; success records the result."""
    seen_running: list[str] = []

    @handler("calc", registry=reg)
    async def calc(payload: dict[str, Any], ctx: Context) -> dict[str, int]:
        with psycopg.connect(target.url, autocommit=True) as other:
            row = other.execute("SELECT status FROM pgmq_worker.jobs WHERE msg_id = %s", (ctx.msg_id,))
            seen_running.append(str(row.fetchone()[0]))  # type: ignore[index]
        return {"sum": payload["a"] + payload["b"]}

    pgmq.ensure_queue(conn, "calc")
    [(msg_id,)] = conn.execute("""SELECT * FROM pgmq.send('calc', '{"a": 2, "b": 3}')""").fetchall()
    burst_worker(reg)
    row = job(conn, "calc", msg_id)
    assert seen_running == ["running"]
    assert row["status"] == "succeeded"
    assert row["result"] == {"sum": 5}
    assert row["progress"] == 100
    assert row["attempts"] == 1
    assert row["error"] is None
    assert row["started_at"] is not None
    assert row["finished_at"] >= row["started_at"]


def test_a_retried_then_dead_job_records_each_error(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A failed attempt leaves the row `failed` with its error; the last one leaves it `dead`."""
    rows_between: list[dict[str, Any]] = []

    @handler("bad", registry=reg, max_attempts=2, backoff=Backoff(base=0.05, jitter=0))
    async def bad(payload: dict[str, Any], ctx: Context) -> None:
        if ctx.attempt == 2:
            with psycopg.connect(target.url, autocommit=True) as other:
                rows_between.append(job(other, "bad", ctx.msg_id))
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    pgmq.ensure_queue(conn, "bad")
    msg_id = pgmq.send(conn, "bad", {})
    burst_worker(reg)
    [between] = rows_between
    assert between["status"] == "running"
    assert between["attempts"] == 2
    assert between["error"]["message"] == "attempt 1 failed"  # the retry recorded its error
    final = job(conn, "bad", msg_id)
    assert final["status"] == "dead"
    assert final["error"]["type"] == "RuntimeError"
    assert final["error"]["message"] == "attempt 2 failed"
    assert final["finished_at"] is not None


def test_a_retry_scheduled_job_is_failed_until_it_runs_again(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Between attempts the row says `failed`, with the error, and is not finished."""

    @handler("later", registry=reg, backoff=Backoff(base=600, jitter=0))
    async def later(payload: dict[str, Any], ctx: Context) -> None:
        raise ValueError("try again in ten minutes")

    pgmq.ensure_queue(conn, "later")
    msg_id = pgmq.send(conn, "later", {})
    worker = make_worker(target, reg, burst=False)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if job_status(conn, msg_id) == "failed":
                break
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    row = job(conn, "later", msg_id)
    assert row["status"] == "failed"
    assert row["error"]["message"] == "try again in ten minutes"
    assert row["finished_at"] is None


def job_status(conn: psycopg.Connection[Any], msg_id: int) -> str | None:
    row = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE msg_id = %s", (msg_id,)).fetchone()
    return None if row is None else str(row[0])


def test_a_poison_message_gets_a_dead_job_row(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Invalid payloads are dead-lettered and their job row says so."""

    @handler("strict", registry=reg)
    async def strict(payload: dict[str, Any], ctx: Context) -> None:
        return None

    pgmq.ensure_queue(conn, "strict")
    [(msg_id,)] = conn.execute("SELECT * FROM pgmq.send('strict', '[1]')").fetchall()
    burst_worker(reg)
    row = job(conn, "strict", msg_id)
    assert row["status"] == "dead"
    assert row["error"]["type"] == "InvalidPayload"


def test_a_job_released_on_shutdown_is_queued_again(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A handler cancelled past the grace leaves its row `queued`, ready for the next worker."""
    started = threading.Event()

    @handler("stuck", registry=reg, visibility_timeout=300)
    async def stuck(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    pgmq.ensure_queue(conn, "stuck")
    msg_id = pgmq.send(conn, "stuck", {})
    worker = make_worker(target, reg, burst=False, shutdown_grace=timedelta(milliseconds=200))

    stop_once_started(worker, started)
    row = job(conn, "stuck", msg_id)
    assert row["status"] == "queued"
    assert row["attempts"] == 1


def test_job_rows_carry_only_the_indexes_pgmq_worker_asks_by(conn: psycopg.Connection[Any]) -> None:
    """Every index costs each enqueue and each status change (migration 0015): only those queries use."""
    names = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'pgmq_worker' AND tablename = 'jobs'"
    ).fetchall()
    assert {n for (n,) in names} == {
        "jobs_pkey",  # by id: the web's GET /jobs/{id}, streams, progress and steps
        "jobs_queue_msg_id_key",  # by message: the read's upsert and every settle
        "jobs_owner_created_idx",  # an owner's jobs, newest first (partial: owner set)
        "jobs_active_idempotency_key",  # one unfinished job per key (partial: key set)
        "jobs_parent_idx",  # a fan-out's children (partial: parent set)
        "jobs_finished_idx",  # retention's batches, oldest finished first (partial: finished)
        # The dashboard's job list (migration 0021, measured by bench/dashboard_pages.py):
        "jobs_created_idx",  # newest first, and a time range
        "jobs_queue_created_idx",  # a queue's jobs, newest first
        "jobs_status_created_idx",  # a status's jobs (partial: not succeeded)
        "jobs_errored_created_idx",  # text in the error, newest errored rows (partial: error set)
        "jobs_errored_queue_created_idx",  # the same within a queue (partial: error set)
        "jobs_error_text_idx",  # text in the error, trigrams (partial: error set; with pg_trgm)
    }
