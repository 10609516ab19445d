"""Queues without job rows (`@handler(..., job_rows=False)`): pgmq alone, every delivery semantic kept."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from db.connect import Target
from queues import enqueue, enqueue_batch, pgmq
from queues.catalog import Catalog
from queues.errors import NoJobRows
from tests.support.fixtures import BurstWorker
from tests.support.helpers import captured, dead, make_worker, rows, stop_once_started
from worker import Backoff, Context, Registry, handler
from worker.errors import HandlerRegistrationError, RateLimited

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


def job_rows(conn: psycopg.Connection[Any], queue: str) -> int:
    """How many pgmq_worker.jobs rows a queue has."""
    row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE queue = %s", (queue,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_queue_without_job_rows_drains_and_acks_with_no_job_rows(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Every message is handled once and deleted; no job row is created for any of them."""
    seen: list[tuple[int, int]] = []

    @handler("plain", registry=reg, job_rows=False)
    async def plain(payload: dict[str, Any], ctx: Context) -> str:
        seen.append((payload["i"], ctx.attempt))
        await ctx.progress(50, step="half")  # nowhere to report to: a no-op, not an error
        return "ignored"

    pgmq.ensure_queue(conn, "plain")
    pgmq.send_batch(conn, "plain", [{"i": i} for i in range(120)])
    with captured() as logs:
        worker = burst_worker(reg, concurrency=8)
    assert sorted(seen) == [(i, 1) for i in range(120)]
    assert rows(conn, "plain") == []
    assert dead(conn, "plain") == []
    assert job_rows(conn, "plain") == 0
    assert worker.settle.acks.acked == 120
    assert [e["event"] for e in logs].count("job.succeeded") == 120


def test_without_job_rows_a_failing_handler_is_retried_then_dead_lettered(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Retries with backoff and the dead-letter record work as with job rows; still no row."""
    attempts: list[int] = []

    @handler("plain_flaky", registry=reg, max_attempts=3, backoff=FAST, job_rows=False)
    async def flaky(payload: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ValueError(f"boom {ctx.attempt}")

    pgmq.ensure_queue(conn, "plain_flaky")
    msg_id = pgmq.send(conn, "plain_flaky", {"n": 1})
    with captured() as logs:
        burst_worker(reg)
    assert attempts == [1, 2, 3]
    assert rows(conn, "plain_flaky") == []
    [record] = dead(conn, "plain_flaky")
    assert (record["msg_id"], record["payload"], record["attempts"]) == (msg_id, {"n": 1}, 3)
    assert (record["reason"], record["error"]["message"]) == ("max_attempts", "boom 3")
    assert job_rows(conn, "plain_flaky") == 0
    events = [e["event"] for e in logs]
    assert events.count("job.retry_scheduled") == 2
    assert events.count("job.dead_lettered") == 1


def test_without_job_rows_rate_limited_is_a_failed_attempt(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """With no row to count deferrals in, RateLimited is retried after its delay and counts as an attempt."""
    attempts: list[int] = []

    @handler("plain_limited", registry=reg, max_attempts=2, job_rows=False)
    async def limited(payload: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RateLimited(0.05)

    pgmq.ensure_queue(conn, "plain_limited")
    pgmq.send(conn, "plain_limited", {})
    burst_worker(reg)
    assert attempts == [1, 2]
    [record] = dead(conn, "plain_limited")
    assert (record["reason"], record["error"]["type"]) == ("max_attempts", "RateLimited")
    assert job_rows(conn, "plain_limited") == 0


def test_without_job_rows_steps_and_fan_out_are_refused_when_called(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """ctx.step and ctx.fan_out need a job row: the delivery is dead-lettered at once, saying why."""

    @handler("plain_step", registry=reg, job_rows=False)
    async def stepping(payload: dict[str, Any], ctx: Context) -> None:
        if payload["call"] == "step":
            await ctx.step("one", lambda: 1)
        else:
            await ctx.fan_out("kids", "plain_step", [{"call": "step"}])

    pgmq.ensure_queue(conn, "plain_step")
    pgmq.send_batch(conn, "plain_step", [{"call": "step"}, {"call": "fan_out"}])
    burst_worker(reg)
    records = dead(conn, "plain_step")
    assert sorted(r["payload"]["call"] for r in records) == ["fan_out", "step"]
    for record in records:
        assert (record["reason"], record["attempts"]) == ("permanent", 1)
        assert "job_rows=False" in record["error"]["message"]
    assert job_rows(conn, "plain_step") == 0


def test_fan_out_into_a_queue_without_job_rows_is_refused(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Children without job rows could never report back to their parent: refused, not hung."""

    @handler("rows_parent", registry=reg)
    async def parent(payload: dict[str, Any], ctx: Context) -> None:
        await ctx.fan_out("kids", "plain_kid", [{"n": 1}])

    @handler("plain_kid", registry=reg, job_rows=False)
    async def kid(payload: dict[str, Any], ctx: Context) -> None:
        return None

    pgmq.ensure_queue(conn, "rows_parent")
    pgmq.ensure_queue(conn, "plain_kid")
    msg_id = pgmq.send(conn, "rows_parent", {})
    burst_worker(reg, queues=("rows_parent", "plain_kid"))
    [record] = dead(conn, "rows_parent")
    assert record["reason"] == "permanent" and "'plain_kid'" in record["error"]["message"]
    assert rows(conn, "plain_kid") == []
    status = conn.execute(
        "SELECT status FROM pgmq_worker.jobs WHERE queue = 'rows_parent' AND msg_id = %s", (msg_id,)
    ).fetchone()
    assert status == ("dead",)


def test_a_handoff_to_a_queue_without_job_rows_creates_no_row(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """ctx.enqueue into a queue this worker runs without job rows sends the message alone."""
    got: list[dict[str, Any]] = []

    @handler("rows_source", registry=reg)
    async def source(payload: dict[str, Any], ctx: Context) -> None:
        ctx.enqueue("plain_sink", {"from": payload["n"]})

    @handler("plain_sink", registry=reg, job_rows=False)
    async def sink(payload: dict[str, Any], ctx: Context) -> None:
        got.append(payload)

    pgmq.ensure_queue(conn, "rows_source")
    pgmq.ensure_queue(conn, "plain_sink")
    pgmq.send_batch(conn, "rows_source", [{"n": 1}, {"n": 2}])
    burst_worker(reg, queues=("rows_source", "plain_sink"))
    assert sorted(p["from"] for p in got) == [1, 2]
    assert rows(conn, "rows_source") == [] and rows(conn, "plain_sink") == []
    assert job_rows(conn, "rows_source") == 2
    assert job_rows(conn, "plain_sink") == 0


def test_without_job_rows_archive_keeps_the_message_in_pgmqs_archive(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """archive=True works without job rows: the message moves to pgmq.a_<queue>."""

    @handler("plain_kept", registry=reg, archive=True, job_rows=False)
    async def kept(payload: dict[str, Any], ctx: Context) -> None:
        return None

    pgmq.ensure_queue(conn, "plain_kept")
    msg_id = pgmq.send(conn, "plain_kept", {"k": 1})
    burst_worker(reg)
    assert rows(conn, "plain_kept") == []
    assert conn.execute("SELECT msg_id, message FROM pgmq.a_plain_kept").fetchall() == [(msg_id, {"k": 1})]
    assert job_rows(conn, "plain_kept") == 0


def test_without_job_rows_a_stopped_worker_releases_what_it_holds(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Past the grace a held message becomes visible at once, with no job row to mark `queued`."""
    started = threading.Event()

    @handler("plain_stuck", registry=reg, visibility_timeout=300, job_rows=False)
    async def stuck(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    pgmq.ensure_queue(conn, "plain_stuck")
    pgmq.send(conn, "plain_stuck", {})
    worker = make_worker(target, reg, burst=False, shutdown_grace=timedelta(milliseconds=300))
    t0 = time.monotonic()
    with captured() as logs:
        stop_once_started(worker, started)
    assert time.monotonic() - t0 < 5
    [row] = rows(conn, "plain_stuck")
    assert row["visible"] and row["read_ct"] == 1
    assert "job.released" in [e["event"] for e in logs]
    assert job_rows(conn, "plain_stuck") == 0


def test_job_rows_and_queues_with_them_share_a_worker(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """One worker serves both kinds; each queue's acks keep to its own kind."""

    @handler("rows_on", registry=reg)
    async def on(payload: dict[str, Any], ctx: Context) -> int:
        return int(payload["i"])

    @handler("rows_off", registry=reg, job_rows=False)
    async def off(payload: dict[str, Any], ctx: Context) -> int:
        return int(payload["i"])

    for queue in ("rows_on", "rows_off"):
        pgmq.ensure_queue(conn, queue)
        pgmq.send_batch(conn, queue, [{"i": i} for i in range(30)])
    burst_worker(reg, queues=("rows_on", "rows_off"), concurrency=10)
    assert rows(conn, "rows_on") == [] and rows(conn, "rows_off") == []
    done = conn.execute(
        "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'rows_on' AND status = 'succeeded'"
    ).fetchone()
    assert done == (30,)
    assert job_rows(conn, "rows_off") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_rows": False, "steps": ["ocr", "translate"]}, "steps need job rows"),
        ({"job_rows": "no"}, "job_rows must be True or False"),
    ],
)
def test_bad_job_rows_combinations_are_refused_at_declaration(kwargs: dict[str, Any], message: str) -> None:
    """Steps are stored with their job: declaring them on a queue without job rows fails at import."""
    with pytest.raises(HandlerRegistrationError, match=message):
        handler("q", registry=Registry(), **kwargs)


def test_enqueue_refuses_a_queue_declared_without_job_rows(conn: psycopg.Connection[Any]) -> None:
    """enqueue returns a job, and such a queue would never settle one: a clear error, nothing sent."""
    declared = Catalog()  # as `@handler(..., job_rows=False)` declares it in a web process
    declared.declare("plain_declared", job_rows=False)
    pgmq.ensure_queue(conn, "plain_declared")
    with pytest.raises(NoJobRows, match="job_rows=False"):
        enqueue(conn, "plain_declared", {"n": 1}, catalog=declared)
    with pytest.raises(NoJobRows):
        enqueue_batch(conn, "plain_declared", [{"n": 1}, {"n": 2}], catalog=declared)
    assert rows(conn, "plain_declared") == []
    assert job_rows(conn, "plain_declared") == 0
