"""The read side of job rows: what `GET /jobs/{id}`, SSE streams and the CLI show.

The worker writes the rows (worker/store); a trigger (migration 0006) notifies
`JOB_CHANNEL` with the ids of the changed rows that a listener has registered in
`pgmq_worker.job_watchers` (`watch`), so listeners re-read them and nobody pays for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

JOB_CHANNEL = "pgmq_worker_jobs"
TERMINAL = frozenset({"succeeded", "dead", "cancelled"})  # `failed` means a retry is scheduled

COLUMNS = (
    "id, queue, msg_id, status, progress, step, detail, attempts, result, error, owner, "
    "created_at, started_at, updated_at, finished_at"
)
GET_JOB = f"SELECT {COLUMNS} FROM pgmq_worker.jobs WHERE id = %s"
WATCH = (
    "INSERT INTO pgmq_worker.job_watchers (job_id, listener, expires_at)"
    " VALUES (%s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (job_id, listener) DO UPDATE SET expires_at = EXCLUDED.expires_at"
)
UNWATCH = "DELETE FROM pgmq_worker.job_watchers WHERE job_id = %s AND listener = %s"
RENEW_WATCHES = (
    "UPDATE pgmq_worker.job_watchers SET expires_at = now() + make_interval(secs => %s) WHERE listener = %s"
)
SWEEP_WATCHES = "DELETE FROM pgmq_worker.job_watchers WHERE expires_at < now()"
UNWATCH_ALL = "DELETE FROM pgmq_worker.job_watchers WHERE listener = %s"


@dataclass(frozen=True, slots=True)
class Job:
    """One job row."""

    id: UUID
    queue: str
    msg_id: int
    status: str
    progress: int
    step: str | None
    detail: Any
    attempts: int
    result: Any
    error: Any
    owner: UUID | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once the job can change no more (succeeded, dead or cancelled)."""
        return self.status in TERMINAL

    def as_json(self) -> dict[str, Any]:
        """The JSON object clients see (the same for GET, SSE and the Flask example)."""
        return {
            "id": str(self.id),
            "queue": self.queue,
            "msg_id": self.msg_id,
            "status": self.status,
            "progress": self.progress,
            "step": self.step,
            "detail": self.detail,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
            "owner": None if self.owner is None else str(self.owner),
            "created_at": self.created_at.isoformat(),
            "started_at": _iso(self.started_at),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": _iso(self.finished_at),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def parse_job_id(value: str) -> UUID | None:
    """A job id from a URL segment; None when it is not a UUID (callers answer 404)."""
    try:
        return UUID(value)
    except ValueError:
        return None


def get_job(conn: psycopg.Connection[Any], job_id: UUID) -> Job | None:
    """The job row, or None."""
    with conn.cursor(row_factory=class_row(Job)) as cur:
        return cur.execute(GET_JOB, (job_id,)).fetchone()


async def aget_job(conn: psycopg.AsyncConnection[Any], job_id: UUID) -> Job | None:
    """The job row, or None (async)."""
    async with conn.cursor(row_factory=class_row(Job)) as cur:
        await cur.execute(GET_JOB, (job_id,))
        return await cur.fetchone()


async def watch(conn: psycopg.AsyncConnection[Any], job_id: UUID, listener: str, ttl_s: float) -> None:
    """Ask for notifications of this job's changes (until unwatched or `ttl_s` without renewal)."""
    await conn.execute(WATCH, (job_id, listener, ttl_s))


async def unwatch(conn: psycopg.AsyncConnection[Any], job_id: UUID, listener: str) -> None:
    """Stop notifications of this job for this listener."""
    await conn.execute(UNWATCH, (job_id, listener))


async def renew_watches(conn: psycopg.AsyncConnection[Any], listener: str, ttl_s: float) -> None:
    """Keep this listener's watches alive; drop everyone's expired ones (crashed processes)."""
    await conn.execute(RENEW_WATCHES, (ttl_s, listener))
    await conn.execute(SWEEP_WATCHES)


async def unwatch_all(conn: psycopg.AsyncConnection[Any], listener: str) -> None:
    """Drop every watch of this listener (on shutdown)."""
    await conn.execute(UNWATCH_ALL, (listener,))
