"""Retry and replay: a dead job sent again under its own id, dead letters back to their queue.

One mechanism for the API, the dashboard and the CLI: the SQL functions of migration 0020
(`pgmq_worker.retry_job`, `replay_dead_letters`, `purge_dead_letters`). Each dead letter goes
back as a new message; a dead job row it came from moves to that message with its attempts,
deferrals and error reset and its earlier run kept in `history`, and the dead letter is deleted,
all in one transaction. Dead letters without a job row (job_rows=False queues, messages sent by
plain pgmq.send) go back as plain messages. SECURITY DEFINER: the web process's role may call
them without being allowed to touch the dead-letter queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

import psycopg

from queues.errors import UnknownQueue
from queues.names import dlq_name, validate_queue_name
from queues.pgmq import aqueue_exists, queue_exists

RetryOutcome = Literal["retried", "unknown", "not_dead", "no_dead_letter", "conflict"]

RETRY_JOB = "SELECT outcome, status, msg_id FROM pgmq_worker.retry_job(%s)"
REPLAY = "SELECT dlq_msg_id, job_id, msg_id FROM pgmq_worker.replay_dead_letters(%s, %s, %s)"
PURGE = "SELECT pgmq_worker.purge_dead_letters(%s, %s)"


@dataclass(frozen=True, slots=True)
class Retry:
    """What asking to retry one job came to."""

    job_id: UUID
    outcome: RetryOutcome
    status: str | None  # the job's status now (None: no such job)
    msg_id: int | None  # its new message when retried, else its current one

    @property
    def retried(self) -> bool:
        """True when a new delivery was sent."""
        return self.outcome == "retried"

    def reason(self) -> str:
        """Why it was not retried, for people."""
        return {
            "retried": "retried",
            "unknown": f"no job {str(self.job_id)!r}",
            "not_dead": f"job {self.job_id} is {self.status}, not dead: only dead jobs are retried",
            "no_dead_letter": f"job {self.job_id} has no dead letter left to send again (purged)",
            "conflict": f"job {self.job_id}'s idempotency key is held by an unfinished job",
        }[self.outcome]


@dataclass(frozen=True, slots=True)
class Replayed:
    """One dead letter sent back: its id in `<queue>_dlq`, the job it revived (if any), the new message."""

    dlq_msg_id: int
    job_id: UUID | None
    msg_id: int


def _retry(job_id: UUID, row: Any) -> Retry:
    outcome, status, msg_id = row
    return Retry(job_id, outcome, status, None if msg_id is None else int(msg_id))


def retry(conn: psycopg.Connection[Any], job_id: UUID) -> Retry:
    """Send a dead job again: a new delivery of the same job id, its dead letter removed."""
    with conn.transaction():
        row = conn.execute(RETRY_JOB, (job_id,)).fetchone()
    return _retry(job_id, row)


async def aretry(conn: psycopg.AsyncConnection[Any], job_id: UUID) -> Retry:
    """Send a dead job again (async)."""
    async with conn.transaction():
        cur = await conn.execute(RETRY_JOB, (job_id,))
        row = await cur.fetchone()
    return _retry(job_id, row)


def _dlq(queue: str) -> str:
    validate_queue_name(queue)
    return dlq_name(queue)


def _replayed(rows: list[Any]) -> list[Replayed]:
    return [Replayed(int(r[0]), r[1], int(r[2])) for r in rows]


def replay(
    conn: psycopg.Connection[Any],
    queue: str,
    msg_ids: Sequence[int] | None = None,
    *,
    error_type: str | None = None,
) -> list[Replayed]:
    """Send dead letters of `queue` back (those named, None: all; of `error_type` only, if given)."""
    if not queue_exists(conn, _dlq(queue)):
        raise UnknownQueue(f"queue {queue!r} has no dead-letter queue")
    ids = None if msg_ids is None else list(msg_ids)
    with conn.transaction():
        rows = conn.execute(REPLAY, (queue, ids, error_type)).fetchall()
    return _replayed(rows)


async def areplay(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    msg_ids: Sequence[int] | None = None,
    *,
    error_type: str | None = None,
) -> list[Replayed]:
    """Send dead letters of `queue` back (async)."""
    if not await aqueue_exists(conn, _dlq(queue)):
        raise UnknownQueue(f"queue {queue!r} has no dead-letter queue")
    ids = None if msg_ids is None else list(msg_ids)
    async with conn.transaction():
        cur = await conn.execute(REPLAY, (queue, ids, error_type))
        rows = await cur.fetchall()
    return _replayed(rows)


def purge(conn: psycopg.Connection[Any], queue: str, older_than: timedelta | None = None) -> int:
    """Delete dead letters of `queue` parked longer than `older_than` (None: all); returns how many."""
    if not queue_exists(conn, _dlq(queue)):
        raise UnknownQueue(f"queue {queue!r} has no dead-letter queue")
    with conn.transaction():
        row = conn.execute(PURGE, (queue, older_than)).fetchone()
    return int(row[0]) if row else 0


async def apurge(conn: psycopg.AsyncConnection[Any], queue: str, older_than: timedelta | None = None) -> int:
    """Delete old dead letters of `queue` (async)."""
    if not await aqueue_exists(conn, _dlq(queue)):
        raise UnknownQueue(f"queue {queue!r} has no dead-letter queue")
    async with conn.transaction():
        cur = await conn.execute(PURGE, (queue, older_than))
        row = await cur.fetchone()
    return int(row[0]) if row else 0
