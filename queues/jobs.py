"""The read side of job rows: what `GET /jobs/{id}`, SSE streams and the CLI show.

The worker writes the rows (queues/pgmq.py); a trigger (migration 0006) notifies
`JOB_CHANNEL` with the ids of the rows each statement changed, so listeners re-read them.
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
