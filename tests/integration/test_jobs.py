"""The worker keeps each message's job row current, in the same statement as the read or settle."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import psycopg

from db.connect import Target
from queues import enqueue, pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import job, job_or_none, make_worker, stop_once_started, wait_running
from worker import Backoff, Context, Registry, handler


def test_a_finished_job_is_succeeded_with_its_result(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A message sent with plain SQL has no job row until its delivery has run a moment, then one
    that says `running`; success records the result."""
    seen: list[Any] = []

    @handler("calc", registry=reg)
    async def calc(payload: dict[str, Any], ctx: Context) -> dict[str, int]:
        with psycopg.connect(target.url, autocommit=True) as other:
            seen.append(job_or_none(other, "calc", ctx.msg_id))
        running = await asyncio.to_thread(wait_running, target.url, "calc", ctx.msg_id)
        seen.append((running["status"], running["attempts"], running["started_at"] is not None))
        return {"sum": payload["a"] + payload["b"]}

    pgmq.ensure_queue(conn, "calc")
    [(msg_id,)] = conn.execute("""SELECT * FROM pgmq.send('calc', '{"a": 2, "b": 3}')""").fetchall()
    burst_worker(reg)
    row = job(conn, "calc", msg_id)
    assert seen == [None, ("running", 1, True)]
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
                rows_between.append(job(other, "bad", ctx.msg_id))  # attempt 1's outcome still
            rows_between.append(
                await asyncio.to_thread(wait_running, target.url, "bad", ctx.msg_id, attempts=2)
            )
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    pgmq.ensure_queue(conn, "bad")
    msg_id = pgmq.send(conn, "bad", {})
    burst_worker(reg)
    [before, between] = rows_between
    assert (before["status"], before["attempts"]) == ("failed", 1)
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
        await asyncio.to_thread(wait_running, target.url, "stuck", ctx.msg_id)
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


def test_a_quick_job_writes_no_running_version_and_a_slow_one_does(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Every status the job row is written with, in order (a trigger the test installs): a job that
    ends within running_after goes queued -> succeeded, one that runs longer passes through
    `running`, and a plain send that ends quickly gets its one row at the settle."""
    conn.execute("CREATE TABLE public.written (n bigserial, msg_id bigint, status text)")
    conn.execute(
        "CREATE FUNCTION public.note_written() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO public.written (msg_id, status) VALUES (NEW.msg_id, NEW.status); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER note_written AFTER INSERT OR UPDATE ON pgmq_worker.jobs"
        " FOR EACH ROW EXECUTE FUNCTION public.note_written()"
    )

    @handler("paced", registry=reg)
    async def paced(payload: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(payload["s"])

    pgmq.ensure_queue(conn, "paced")
    quick, slow = enqueue(conn, "paced", {"s": 0}), enqueue(conn, "paced", {"s": 2.5})
    plain = pgmq.send(conn, "paced", {"s": 0})
    burst_worker(reg, running_after=timedelta(seconds=1))

    def written(msg_id: int) -> list[str]:
        query = "SELECT status FROM public.written WHERE msg_id = %s ORDER BY n"
        return [str(r[0]) for r in conn.execute(query, (msg_id,)).fetchall()]

    assert written(quick.msg_id) == ["queued", "succeeded"]
    assert written(slow.msg_id) == ["queued", "running", "succeeded"]
    assert written(plain) == ["succeeded"]
    for msg_id in (quick.msg_id, slow.msg_id, plain):
        row = job(conn, "paced", msg_id)
        assert row["attempts"] == 1 and row["attempt_started_at"] == row["started_at"]
        assert row["created_at"] <= row["started_at"] <= row["finished_at"]


def test_a_handlers_first_write_finds_its_row_running_before_running_after(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A plain send has no row until its delivery has run running_after (here a minute): an
    artifact, the handler's first write, hangs off the row, so the row is made `running` first."""
    seen: list[Any] = []

    @handler("drawn", registry=reg)
    async def drawn(payload: dict[str, Any], ctx: Context) -> str:
        path = await ctx.artifact("out.txt", b"hi", "text/plain")
        with psycopg.connect(target.url, autocommit=True) as other:
            row = job(other, "drawn", ctx.msg_id)
        seen.append((row["status"], row["attempts"]))
        return path

    pgmq.ensure_queue(conn, "drawn")
    msg_id = pgmq.send(conn, "drawn", {})
    burst_worker(reg, running_after=timedelta(minutes=1))
    row = job(conn, "drawn", msg_id)
    assert seen == [("running", 1)]
    assert row["status"] == "succeeded" and row["result"] == f"/jobs/{row['id']}/artifacts/out.txt"
    stored = conn.execute("SELECT data FROM pgmq_worker.job_artifacts WHERE job_id = %s", (row["id"],))
    assert [bytes(r[0]) for r in stored.fetchall()] == [b"hi"]
