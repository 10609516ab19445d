"""The dashboard's dead-letters page: what each `<queue>_dlq` holds, newest first, and its error types.

Reads only; sending back and purging are queues/retry.py's (one mechanism for API, CLI and page).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from queues.names import DLQ_SUFFIX, dlq_name, table_name

MAX_LIST: Final = 200
DEAD_QUEUES = "SELECT queue_name FROM pgmq.meta WHERE queue_name LIKE '%\\_dlq' ORDER BY queue_name"
COUNT = sql.SQL("SELECT count(*) FROM pgmq.{q}")
# The job row a dead letter came from: same queue, same message id (the record names both).
ENTRIES = sql.SQL(
    "SELECT d.msg_id, d.enqueued_at AS dead_lettered_at, d.message->>'reason' AS reason,"
    " d.message->'error'->>'type' AS error_type, d.message->'error'->>'message' AS error_message,"
    " (d.message->>'attempts')::integer AS attempts, j.id AS job_id"
    " FROM pgmq.{q} AS d LEFT JOIN pgmq_worker.jobs AS j"
    " ON j.queue = %(queue)s AND j.msg_id = (d.message->>'msg_id')::bigint"
    " WHERE %(error_type)s::text IS NULL OR d.message->'error'->>'type' = %(error_type)s"
    " ORDER BY d.msg_id DESC LIMIT %(limit)s"
)
ERROR_TYPES = sql.SQL(
    "SELECT coalesce(message->'error'->>'type', '') AS error_type, count(*) FROM pgmq.{q}"
    " GROUP BY 1 ORDER BY 2 DESC, 1"
)


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter, as the page lists it."""

    msg_id: int
    dead_lettered_at: datetime
    reason: str | None
    error_type: str | None
    error_message: str | None
    attempts: int | None
    job_id: UUID | None


async def adead_queues(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, int]]:
    """Each queue that has a dead-letter queue, with how many letters it holds."""
    found = []
    for (name,) in await (await conn.execute(DEAD_QUEUES)).fetchall():
        row = await (await conn.execute(COUNT.format(q=sql.Identifier(table_name(name))))).fetchone()
        found.append((str(name).removesuffix(DLQ_SUFFIX), int(row[0]) if row else 0))
    return found


async def aentries(
    conn: psycopg.AsyncConnection[Any], queue: str, error_type: str | None = None, limit: int = 100
) -> list[DeadLetterRow]:
    """The newest dead letters of `queue` (of one error type, if given)."""
    query = ENTRIES.format(q=sql.Identifier(table_name(dlq_name(queue))))
    async with conn.cursor(row_factory=class_row(DeadLetterRow)) as cur:
        await cur.execute(query, {"queue": queue, "error_type": error_type, "limit": min(limit, MAX_LIST)})
        return await cur.fetchall()


async def aerror_types(conn: psycopg.AsyncConnection[Any], queue: str) -> list[tuple[str, int]]:
    """The error types among `queue`'s dead letters, most frequent first ('' for none recorded)."""
    query = ERROR_TYPES.format(q=sql.Identifier(table_name(dlq_name(queue))))
    return [(str(t), int(n)) for t, n in await (await conn.execute(query)).fetchall()]
