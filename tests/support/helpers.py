"""Shared test helpers: run a worker in-process, read queue state."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import structlog
from psycopg import sql
from structlog.testing import capture_logs

from db.connect import Target
from db.settings import DatabaseSettings
from queues import pgmq
from queues.names import dlq_name, table_name
from worker.registry import Registry
from worker.runner import Worker
from worker.settings import WorkerSettings
from worker.settle import Acks
from worker.store.deliveries import Message


def worker_settings(**overrides: Any) -> WorkerSettings:
    """Fast settings for tests: short polls and heartbeats, small grace."""
    values: dict[str, Any] = {
        "concurrency": 4,
        "poll_interval": timedelta(milliseconds=100),
        "heartbeat_interval": timedelta(milliseconds=200),
        "shutdown_grace": timedelta(seconds=5),
        "reconnect_max": timedelta(seconds=1),
    }
    values.update(overrides)
    return WorkerSettings(**values)


def make_worker(
    target: Target, registry: Registry, *, burst: bool = True, queues: tuple[str, ...] = (), **settings: Any
) -> Worker:
    """A Worker on the test database with test settings."""
    return Worker(
        target,
        registry,
        worker_settings(**settings),
        DatabaseSettings(database_url=target.url, pool_min_size=1, pool_max_size=6),
        queues=queues,
        burst=burst,
    )


def run_burst(target: Target, registry: Registry, *, timeout: float = 60, **settings: Any) -> Worker:
    """Run a burst worker to completion (queues empty, nothing in flight)."""
    worker = make_worker(target, registry, burst=True, **settings)
    asyncio.run(asyncio.wait_for(worker.run(), timeout))
    return worker


def stop_once_started(worker: Worker, started: threading.Event, *, timeout: float = 10) -> None:
    """Run a non-burst worker until a handler sets `started`, then stop it (warm) and wait."""

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while not started.is_set():
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.wait_for(task, timeout)

    asyncio.run(go())


def send(conn: psycopg.Connection[Any], queue: str, *bodies: Any) -> list[int]:
    """Create the queue if need be and send each body as a plain pgmq message; their msg_ids."""
    pgmq.ensure_queue(conn, queue)
    return [pgmq.send(conn, queue, b) for b in bodies]


def rows(conn: psycopg.Connection[Any], queue: str) -> list[dict[str, Any]]:
    """Every message row of a queue (no read_ct bump), oldest first."""
    query = sql.SQL(
        "SELECT msg_id, read_ct, vt, vt <= clock_timestamp() AS visible, message FROM pgmq.{} ORDER BY msg_id"
    ).format(sql.Identifier(table_name(queue)))
    cur = conn.execute(query)
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """structlog events with their bound context (queue, msg_id, attempt) merged in."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs


def dead(conn: psycopg.Connection[Any], queue: str) -> list[dict[str, Any]]:
    """The dead-letter records of a queue."""
    return [r["message"] for r in rows(conn, dlq_name(queue))]


def job(conn: psycopg.Connection[Any], queue: str, msg_id: int) -> dict[str, Any]:
    """The job row of a message."""
    cur = conn.execute("SELECT * FROM pgmq_worker.jobs WHERE queue = %s AND msg_id = %s", (queue, msg_id))
    cols = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None, f"no job row for {queue}:{msg_id}"
    return dict(zip(cols, row, strict=True))


def job_or_none(conn: psycopg.Connection[Any], queue: str, msg_id: int) -> dict[str, Any] | None:
    """The job row of a message, None while it has none (a plain send not yet run a moment)."""
    cur = conn.execute("SELECT * FROM pgmq_worker.jobs WHERE queue = %s AND msg_id = %s", (queue, msg_id))
    cols = [d.name for d in cur.description or []]
    row = cur.fetchone()
    return None if row is None else dict(zip(cols, row, strict=True))


def wait_running(
    url: str, queue: str, msg_id: int, *, attempts: int = 1, timeout: float = 5
) -> dict[str, Any]:
    """From inside a handler: wait until its job row says `running` for this attempt (the worker
    marks it once the delivery has run `running_after`); the row then."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as other:
        while True:
            row = job_or_none(other, queue, msg_id)
            if row is not None and row["status"] == "running" and row["attempts"] == attempts:
                return row
            assert time.monotonic() < deadline, f"{queue}:{msg_id} not marked running: {row}"
            time.sleep(0.02)


def visible_now(conn: psycopg.Connection[Any], queue: str, msg_id: int | None = None) -> None:
    """Make a killed worker's messages (one, or the whole queue's) visible now, not after their vt."""
    update = sql.SQL("UPDATE pgmq.{} SET vt = clock_timestamp()").format(sql.Identifier(table_name(queue)))
    if msg_id is not None:
        update = sql.SQL("{} WHERE msg_id = {}").format(update, sql.Literal(msg_id))
    conn.execute(update)


def ack_later(acks: Acks, message: Message, result: Any) -> asyncio.Future[bool]:
    """Hand one success to `acks`: a future of True (acked), False (no longer ours) or its error."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def landed(outcome: bool | BaseException) -> None:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    acks.add(message, result, landed)
    return future


class Peak:
    """Handlers running at once, per queue, and the most seen (thread-safe: `def` handlers use it too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.starts: list[str] = []

    def enter(self, queue: str) -> None:
        with self._lock:
            self.running[queue] = self.running.get(queue, 0) + 1
            self.peak[queue] = max(self.peak.get(queue, 0), self.running[queue])
            self.starts.append(queue)

    def leave(self, queue: str) -> None:
        with self._lock:
            self.running[queue] -= 1
