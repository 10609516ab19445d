"""The worker registry (migration 0018): each worker's row while it runs, its counts, and its removal.

A worker upserts its row in pgmq_worker.workers on a heartbeat, marks it `draining` when its stop
starts and deletes it when it stops; readers judge a row `stale` from the interval it records;
any worker's heartbeat removes rows long without one. A database outage never stops the worker.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg_pool import AsyncConnectionPool

from db.connect import Target
from queues import enqueue, pgmq
from queues.stats import queue_stats
from queues.workers import FORGET_AFTER, STALE_AFTER, WorkerRow, alist_workers, list_workers
from tests.integration.test_privileges import (
    as_role,
    refused,
    roles,  # noqa: F401  (the fixture: three least-privilege roles)
)
from tests.support.helpers import captured, make_worker
from tests.support.ports import free_port
from tests.support.processes import log_events
from worker import Context, Permanent, Registry, Retry, handler
from worker.cli import main
from worker.presence import Presence, card_for
from worker.runner import Worker
from worker.settings import WorkerSettings

BEAT = timedelta(milliseconds=200)


def rows_of(db_url: str) -> list[WorkerRow]:
    """The registry as `pgmq-worker workers` reads it (a connection of its own)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return list_workers(conn)


async def until(predicate: Any, within: float = 10.0) -> Any:
    """Poll `predicate()` (sync, run in a thread) until it returns something truthy; that value."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {within}s: {predicate}")
        await asyncio.sleep(0.05)


def test_a_burst_workers_row_is_there_while_it_runs_and_gone_after(
    db_url: str, target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """While its handler runs, the worker's row says running, one in flight, its queues, host and
    pid, the Fly machine and region from the environment; after the burst, no row is left."""
    seen: list[WorkerRow] = []

    @handler("reg_burst", registry=reg)
    async def burst(payload: dict[str, Any], ctx: Context) -> None:
        row = await until(lambda: [r for r in rows_of(db_url) if r.in_flight == 1])
        seen.extend(row)

    pgmq.ensure_queue(conn, "reg_burst")
    enqueue(conn, "reg_burst", {"n": 1})
    settings = {"registry_heartbeat": BEAT, "FLY_MACHINE_ID": "148e1", "FLY_REGION": "ams"}
    asyncio.run(asyncio.wait_for(make_worker(target, reg, burst=True, **settings).run(), 30))
    [row] = seen
    assert (row.status, row.queues, row.concurrency, row.heartbeat) == ("running", ["reg_burst"], 4, BEAT)
    assert (row.machine_id, row.region) == ("148e1", "ams")
    assert row.host and row.pid > 0 and row.id.startswith(f"{row.host}:{row.pid}:")
    assert row.version and row.last_seen >= row.started_at
    assert rows_of(db_url) == []


def test_the_row_counts_what_the_worker_settled_and_its_stop(
    db_url: str, target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """5 succeed, 3 fail with a retry scheduled, 2 are dead-lettered, 1 still runs: the row says
    processed 10, failed 5, in flight 1; the warm stop writes `draining` while that one finishes,
    and the row goes once it has."""
    gate: dict[str, asyncio.Event] = {}

    @handler("reg_counted", registry=reg, max_attempts=3)
    async def counted(payload: dict[str, Any], ctx: Context) -> None:
        if payload["fate"] == "hold":
            await gate["release"].wait()
        if payload["fate"] == "retry":
            raise Retry(delay=600, reason="later")
        if payload["fate"] == "dead":
            raise Permanent("never")

    pgmq.ensure_queue(conn, "reg_counted")
    for fate in ["hold"] + ["ok"] * 5 + ["retry"] * 3 + ["dead"] * 2:
        enqueue(conn, "reg_counted", {"fate": fate})
    worker = make_worker(target, reg, burst=False, registry_heartbeat=BEAT)
    statuses: list[str] = []

    async def go() -> WorkerRow:
        gate["release"] = asyncio.Event()
        task = asyncio.create_task(worker.run())
        [row] = await until(lambda: [r for r in rows_of(db_url) if r.processed == 10 and r.in_flight == 1])
        worker.stop()
        statuses.extend(await until(lambda: [r.status for r in rows_of(db_url) if r.status != "running"]))
        gate["release"].set()
        await asyncio.wait_for(task, 10)
        return row

    row = asyncio.run(go())
    assert (row.processed, row.failed, row.in_flight, row.status) == (10, 5, 1, "running")
    assert statuses == ["draining"]
    assert worker.presence.tally().processed == 11
    assert rows_of(db_url) == []


def test_stale_rows_are_shown_stale_and_forgotten_later(
    db_url: str, target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A row whose heartbeat is older than three of its intervals reads `stale`; one older than
    an hour is deleted by another worker's heartbeat, a fresher stale one is kept."""

    @handler("reg_stale", registry=reg)
    async def nothing(payload: dict[str, Any], ctx: Context) -> None:
        return None

    columns = "id, host, pid, version, queues, concurrency, heartbeat, started_at, last_seen"
    values = "%s, 'gone-host', 1, '0', ARRAY['reg_stale'], 1, interval '5 seconds', now() - %s, now() - %s"
    for worker_id, age in [
        ("just-stale", timedelta(seconds=5 * STALE_AFTER + 1)),
        ("fresh", timedelta(seconds=1)),
        ("long-gone", FORGET_AFTER + timedelta(minutes=1)),
    ]:
        conn.execute(f"INSERT INTO pgmq_worker.workers ({columns}) VALUES ({values})", (worker_id, age, age))
    statuses = {r.id: r.status for r in rows_of(db_url)}
    assert statuses == {"just-stale": "stale", "fresh": "running", "long-gone": "stale"}

    async def go() -> list[WorkerRow]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            worker = make_worker(target, reg, burst=False, registry_heartbeat=BEAT)
            task = asyncio.create_task(worker.run())
            await until(lambda: hasattr(worker, "presence"))
            ours = worker.presence.card.id
            # Ours in, long-gone out (deleted by our first heartbeat), the stale one kept.
            await until(lambda: {r.id for r in rows_of(db_url)} == {"just-stale", "fresh", ours})
            listed = await alist_workers(aconn)
            worker.stop()
            await asyncio.wait_for(task, 10)
            return listed

    listed = asyncio.run(go())
    assert [r.id for r in listed][:2] == ["just-stale", "fresh"]
    assert [r.status for r in listed] == ["stale", "running", "running"]


def test_a_database_outage_does_not_stop_the_worker(
    db_url: str, target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Every connection of the worker's is terminated: the heartbeat fails (logged once), the
    worker keeps running, its row is written again and a job sent afterwards still runs."""
    ran: list[int] = []

    @handler("reg_outage", registry=reg)
    async def after(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(payload["n"])

    pgmq.ensure_queue(conn, "reg_outage")
    worker = make_worker(target, reg, burst=False, registry_heartbeat=BEAT, listen=False)

    def last_seen() -> Any:
        rows = rows_of(db_url)
        return rows[0].last_seen if rows else None

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        before = await until(last_seen)
        # Every other backend on the test database: the pool's connections, mid-heartbeat or idle.
        for _ in range(3):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(BEAT.total_seconds())
        await until(lambda: (seen := last_seen()) is not None and seen > before)
        enqueue(conn, "reg_outage", {"n": 7})
        await until(lambda: ran == [7])
        assert not task.done()
        worker.stop()
        await asyncio.wait_for(task, 10)

    with captured() as logs:
        asyncio.run(go())
    assert [e["event"] for e in logs].count("worker.side_task_failed") == 0
    assert rows_of(db_url) == []


def test_a_heartbeat_that_cannot_reach_the_database_is_logged_once_and_never_raises(
    reg: Registry,
) -> None:
    """A pool on a port nobody listens on: each beat fails quietly after the first warning."""

    async def go() -> None:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=1"
        pool = AsyncConnectionPool(url, min_size=0, max_size=1, open=False, timeout=0.5)
        await pool.open(wait=False)
        try:
            settings = WorkerSettings(registry_heartbeat=BEAT)
            presence = Presence(pool, card_for(["reg_x"], settings), lambda: 0, connect_timeout_s=0.5)
            for _ in range(3):
                await presence.beat()
            await presence.withdraw()
        finally:
            await pool.close()

    with captured() as logs:
        asyncio.run(go())
    events = [e["event"] for e in logs]
    assert events.count("registry.heartbeat_failed") == 1
    assert events.count("registry.withdraw_failed") == 1


def test_a_worker_is_listed_by_the_cli(db_url: str, target: Target, reg: Registry) -> None:
    """`pgmq-worker workers --json` prints one object per worker with the documented keys."""

    @handler("reg_cli", registry=reg)
    async def nothing(payload: dict[str, Any], ctx: Context) -> None:
        return None

    worker: Worker = make_worker(target, reg, burst=False, registry_heartbeat=BEAT)
    outputs: dict[str, str] = {}

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        await until(lambda: rows_of(db_url))
        for flag in ("--json", None):
            args = ["workers", *([flag] if flag else [])]
            ran = await asyncio.to_thread(CliRunner().invoke, main, args, env={"DATABASE_URL": db_url})
            assert ran.exit_code == 0, ran.output
            outputs[flag or "text"] = ran.output
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    [listed] = log_events(outputs["--json"])
    assert {"id", "queues", "status", "last_seen", "in_flight", "host", "pid", "processed"} <= set(listed)
    assert (listed["queues"], listed["status"], listed["in_flight"]) == (["reg_cli"], "running", 0)
    header, line = outputs["text"].splitlines()
    assert header.split()[:2] == ["id", "status"]
    assert line.split()[:2] == [listed["id"], "running"]


def test_the_worker_role_writes_its_row_and_the_web_role_reads_rows_and_stats(
    db_url: str,
    roles: dict[str, str],  # noqa: F811  (the fixture imported above)
) -> None:
    """As the least-privilege roles of migration 0017: a worker's heartbeat, the `workers` list and
    `stats` (stuck jobs included) as `web`; the web role may not write a row."""
    reg = Registry()

    @handler("priv_registry", registry=reg)
    async def nothing(payload: dict[str, Any], ctx: Context) -> None:
        return None

    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "priv_registry")
    as_worker = Target(as_role(db_url, roles["worker"]), transaction_pooler=False)
    worker = make_worker(as_worker, reg, burst=False, registry_heartbeat=BEAT)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        await until(lambda: rows_of(db_url))
        web_url = as_role(db_url, roles["web"])
        [row] = rows_of(web_url)
        assert row.status == "running"
        with psycopg.connect(web_url, autocommit=True) as web:
            assert [s.queue for s in queue_stats(web, queue="priv_registry")] == ["priv_registry"]
        assert refused(web_url, "DELETE FROM pgmq_worker.workers")
        worker.stop()
        await asyncio.wait_for(task, 10)

    with captured() as logs:
        asyncio.run(go())
    assert "registry.heartbeat_failed" not in [e["event"] for e in logs]
    assert rows_of(db_url) == []
