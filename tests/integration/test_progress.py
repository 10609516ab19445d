"""ctx.progress: coalesced writes to the job row, the last report never lost, bad reports refused."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from db.connect import Target
from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, job
from worker import Context, Registry, handler


def count_job_updates(conn: psycopg.Connection[Any]) -> None:
    """Count every update of a job row in `job_updates` (a test-only trigger)."""
    conn.execute("CREATE TABLE job_updates (job_id uuid, progress smallint)")
    conn.execute(
        "CREATE FUNCTION count_job_update() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO job_updates VALUES (NEW.id, NEW.progress); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER count_job_update AFTER UPDATE ON pgmq_worker.jobs"
        " FOR EACH ROW EXECUTE FUNCTION count_job_update()"
    )


def test_a_tight_loop_of_reports_costs_a_few_writes_and_keeps_the_last(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """1,000 reports over about a second become a handful of row updates; the row shows the last."""
    seen: list[dict[str, Any]] = []

    @handler("busy", registry=reg, max_attempts=1)
    async def busy(payload: dict[str, Any], ctx: Context) -> None:
        for i in range(1000):
            await ctx.progress(i / 10, step=f"item {i}", detail={"i": i})
            await asyncio.sleep(0.001)
        with psycopg.connect(target.url, autocommit=True) as other:
            seen.append(job(other, "busy", ctx.msg_id))  # before the settle
        await ctx.progress(99, step="saving")
        raise RuntimeError("stop here, so the row keeps the reported progress")

    pgmq.ensure_queue(conn, "busy")
    msg_id = pgmq.send(conn, "busy", {})
    count_job_updates(conn)
    started = time.monotonic()
    burst_worker(reg, progress_interval=timedelta(milliseconds=500))
    elapsed = time.monotonic() - started
    row = job(conn, "busy", msg_id)
    assert row["status"] == "dead"
    assert (row["progress"], row["step"]) == (99, "saving")  # the last report, written before the settle
    assert row["detail"] == {"i": 999}
    [mid] = seen
    assert mid["progress"] >= 50  # reports landed while it ran
    row_count = conn.execute("SELECT count(*) FROM job_updates").fetchone()
    writes = int(row_count[0]) if row_count else 0
    # About two progress writes a second, the final flush, and the settle (the read inserts).
    assert 2 <= writes <= 2 * elapsed + 3, (writes, elapsed)
    assert dead(conn, "busy")


def test_a_def_handler_reports_with_the_sync_twin(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """progress_sync works from the handler's thread; success then sets progress to 100."""
    mid: list[dict[str, Any]] = []

    @handler("steps", registry=reg)
    def steps(payload: dict[str, Any], ctx: Context) -> str:
        ctx.progress_sync(40, step="ocr")
        time.sleep(0.6)  # past the coalescing interval: the next report is written at once
        ctx.progress_sync(80, step="translate", detail={"lang": "de"})
        with psycopg.connect(target.url, autocommit=True) as other:
            mid.append(job(other, "steps", ctx.msg_id))
        return "ok"

    pgmq.ensure_queue(conn, "steps")
    msg_id = pgmq.send(conn, "steps", {})
    burst_worker(reg)
    [row_mid] = mid
    assert (row_mid["progress"], row_mid["step"], row_mid["detail"]) == (80, "translate", {"lang": "de"})
    final = job(conn, "steps", msg_id)
    assert (final["status"], final["progress"], final["step"]) == ("succeeded", 100, "translate")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((101,), {}, "0 to 100"),
        ((-1,), {}, "0 to 100"),
        ((float("nan"),), {}, "number"),
        (("50",), {}, "number"),
        ((True,), {}, "number"),
        ((10,), {"step": 5}, "step"),
        ((10,), {"step": "x" * 201}, "step"),
        ((10,), {"detail": [1]}, "detail"),
    ],
)
def test_bad_progress_reports_are_refused(
    conn: psycopg.Connection[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
    reg: Registry,
    burst_worker: BurstWorker,
) -> None:
    """A bad report raises ValueError in the handler (a failed attempt), and writes nothing."""
    errors: list[str] = []

    @handler("reports", registry=reg, max_attempts=1)
    async def reports(payload: dict[str, Any], ctx: Context) -> None:
        try:
            await ctx.progress(*args, **kwargs)
        except ValueError as exc:
            errors.append(str(exc))
            raise

    pgmq.ensure_queue(conn, "reports")
    msg_id = pgmq.send(conn, "reports", {})
    burst_worker(reg)
    assert len(errors) == 1
    assert message in errors[0]
    row = job(conn, "reports", msg_id)
    assert (row["status"], row["progress"], row["step"]) == ("dead", 0, None)
