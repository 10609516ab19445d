"""The worker's statements on its registry row (pgmq_worker.workers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from queues.workers import FORGET_AFTER, FORGET_INTERVALS

# One statement a heartbeat: this worker's row, and (by any worker) the rows of workers gone
# long ago (queues.workers says when). started_at is the process's own: a row deleted while the
# database was away comes back with it.
BEAT = """
WITH forgotten AS (
    DELETE FROM pgmq_worker.workers
    WHERE id <> %(id)s AND last_seen < now() - greatest(%(forget_intervals)s * heartbeat, %(forget_after)s)
)
INSERT INTO pgmq_worker.workers AS w (
    id, host, pid, machine_id, region, version, queues, concurrency, status, in_flight, processed,
    failed, heartbeat, started_at, last_seen
) VALUES (
    %(id)s, %(host)s, %(pid)s, %(machine_id)s, %(region)s, %(version)s, %(queues)s, %(concurrency)s,
    %(status)s, %(in_flight)s, %(processed)s, %(failed)s, %(heartbeat)s, %(started_at)s, now()
)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, in_flight = EXCLUDED.in_flight,
    processed = EXCLUDED.processed, failed = EXCLUDED.failed, heartbeat = EXCLUDED.heartbeat,
    last_seen = now()
"""
WITHDRAW = "DELETE FROM pgmq_worker.workers WHERE id = %s"


@dataclass(frozen=True, slots=True)
class Card:
    """What a worker's row says about it that does not change while it runs."""

    id: str
    host: str
    pid: int
    machine_id: str | None
    region: str | None
    version: str
    queues: tuple[str, ...]
    concurrency: int
    heartbeat: timedelta
    started_at: datetime


@dataclass(frozen=True, slots=True)
class Tally:
    """What changes: the row's status, in flight, and counts since start."""

    status: str  # running | draining
    in_flight: int
    processed: int
    failed: int


async def beat(conn: psycopg.AsyncConnection[Any], card: Card, tally: Tally) -> None:
    """Upsert this worker's row (last_seen now); delete rows long without a heartbeat."""
    await conn.execute(
        BEAT,
        {
            "id": card.id,
            "host": card.host,
            "pid": card.pid,
            "machine_id": card.machine_id,
            "region": card.region,
            "version": card.version,
            "queues": list(card.queues),
            "concurrency": card.concurrency,
            "heartbeat": card.heartbeat,
            "started_at": card.started_at,
            "status": tally.status,
            "in_flight": tally.in_flight,
            "processed": tally.processed,
            "failed": tally.failed,
            "forget_intervals": FORGET_INTERVALS,
            "forget_after": FORGET_AFTER,
        },
    )


async def withdraw(conn: psycopg.AsyncConnection[Any], worker_id: str) -> None:
    """Delete this worker's row (a clean stop)."""
    await conn.execute(WITHDRAW, (worker_id,))
