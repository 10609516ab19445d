"""The read side of the worker registry (migration 0018): what `pgmq-worker workers` and the dashboard show.

Each worker writes its own row on a heartbeat (worker/presence.py). A row says how often that is
(`heartbeat`), so any reader judges any worker the same way: `stale` once its last heartbeat is
older than `STALE_AFTER` intervals (the worker was killed, its machine lost, or it cannot reach the
database), else the status the worker wrote (`running`, or `draining` once its stop started).
Every worker's heartbeat deletes rows whose heartbeat is older than `FORGET_AFTER` (or
`FORGET_INTERVALS` of their own intervals, if that is longer); a clean stop deletes its own row.
The ages are judged on the database's clock, never a reader's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import class_row

STALE_AFTER: Final = 3  # heartbeat intervals without one: `stale`
FORGET_AFTER: Final = timedelta(hours=1)  # a stale row is kept this long for the operator to see
FORGET_INTERVALS: Final = 10  # ... or this many of its intervals, if that is longer

LIST_WORKERS = """
SELECT id, host, pid, machine_id, region, version, queues, concurrency,
    CASE WHEN last_seen < now() - %(stale)s * heartbeat THEN 'stale' ELSE status END AS status,
    in_flight, processed, failed, heartbeat, started_at, last_seen,
    extract(epoch FROM now() - last_seen)::float8 AS last_seen_s
FROM pgmq_worker.workers ORDER BY started_at, id
"""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker process as its last heartbeat described it; `status` judged when read."""

    id: str
    host: str
    pid: int
    machine_id: str | None
    region: str | None
    version: str
    queues: list[str]
    concurrency: int
    status: str  # running | draining | stale
    in_flight: int
    processed: int
    failed: int
    heartbeat: timedelta
    started_at: datetime
    last_seen: datetime
    last_seen_s: float  # seconds since the last heartbeat, on the database's clock

    def as_json(self) -> dict[str, Any]:
        """The JSON object `pgmq-worker workers --json` prints (and a dashboard may serve)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "machine_id": self.machine_id,
            "region": self.region,
            "version": self.version,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "status": self.status,
            "in_flight": self.in_flight,
            "processed": self.processed,
            "failed": self.failed,
            "heartbeat_s": self.heartbeat.total_seconds(),
            "started_at": self.started_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "last_seen_s": round(self.last_seen_s, 3),
        }


def list_workers(conn: psycopg.Connection[Any]) -> list[WorkerRow]:
    """Every registered worker, oldest first, each `running`, `draining` or `stale`."""
    with conn.cursor(row_factory=class_row(WorkerRow)) as cur:
        cur.execute(LIST_WORKERS, {"stale": STALE_AFTER})
        return cur.fetchall()


async def alist_workers(conn: psycopg.AsyncConnection[Any]) -> list[WorkerRow]:
    """`list_workers` on an async connection (the web process)."""
    async with conn.cursor(row_factory=class_row(WorkerRow)) as cur:
        await cur.execute(LIST_WORKERS, {"stale": STALE_AFTER})
        return await cur.fetchall()
