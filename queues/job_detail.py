"""Everything the dashboard's job page shows about one job, beyond its row (queues/jobs.py).

Its payload (from the live message, the archive, or the dead letter), the full row's policy
columns, its steps with outputs and timings, its artifacts' names and sizes (not their bytes),
its fan-outs and their children, its webhook deliveries (the newest MAX_WEBHOOK_DELIVERIES, and
how many there are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row, dict_row

from queues.names import dlq_name, table_name

MAX_CHILDREN: Final = 200
MAX_WEBHOOK_DELIVERIES: Final = 50

EXTRA = (
    "SELECT deferrals, webhook_url, parent_id, fan_out, child_index, timeout_s, max_attempts,"
    " idempotency_key FROM pgmq_worker.jobs WHERE id = %s"
)
STEPS = (
    "SELECT name, status, attempts, output, error, started_at, finished_at FROM pgmq_worker.job_steps"
    " WHERE job_id = %s ORDER BY started_at NULLS LAST, name"
)
ARTIFACTS = (
    "SELECT name, content_type, size, created_at FROM pgmq_worker.job_artifacts"
    " WHERE job_id = %s ORDER BY created_at, name"
)
FAN_OUTS = (
    "SELECT name, child_queue, total, max_running, succeeded, failed, status, deadline, created_at,"
    " closed_at FROM pgmq_worker.fan_outs WHERE parent_id = %s ORDER BY created_at"
)
CHILDREN = (
    "SELECT id, queue, status, progress, fan_out, child_index, error->>'type' AS error_type"
    " FROM pgmq_worker.jobs WHERE parent_id = %s ORDER BY fan_out, child_index LIMIT %s"
)
# Newest first, walking webhook_deliveries_job_idx backwards (migration 0024).
WEBHOOK_DELIVERIES = (
    "SELECT webhook_id, event, result, tries, status_code, error, first_tried_at, last_tried_at, duration_ms"
    " FROM pgmq_worker.webhook_deliveries WHERE job_id = %s ORDER BY first_tried_at DESC, webhook_id LIMIT %s"
)
WEBHOOK_DELIVERY_COUNT = "SELECT count(*) FROM pgmq_worker.webhook_deliveries WHERE job_id = %s"
# The payload is in the message while it lives, in pgmq's archive after an archiving ack, and in
# the dead letter's record after dead-lettering; an acked-and-deleted message's payload is gone.
LIVE_PAYLOAD = sql.SQL("SELECT message FROM pgmq.{q} WHERE msg_id = %s")
ARCHIVED_PAYLOAD = sql.SQL("SELECT message FROM pgmq.{a} WHERE msg_id = %s")
DEAD_PAYLOAD = sql.SQL(
    "SELECT message->'payload' FROM pgmq.{q} WHERE message->>'msg_id' = %s::text ORDER BY msg_id DESC LIMIT 1"
)
TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a job (`ctx.step`)."""

    name: str
    status: str
    attempts: int
    output: Any
    error: Any
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_ms(self) -> float | None:
        """How long its last run took, when it has finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """A stored file's name, type and size."""

    name: str
    content_type: str
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FanOut:
    """One fan-out of a parent job."""

    name: str
    child_queue: str
    total: int
    max_running: int
    succeeded: int
    failed: int
    status: str
    deadline: datetime
    created_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Child:
    """A child job of a fan-out."""

    id: UUID
    queue: str
    status: str
    progress: int
    fan_out: str | None
    child_index: int | None
    error_type: str | None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One webhook event of the job and what became of it (its last try's answer)."""

    webhook_id: str
    event: str
    result: str  # pending (still being tried) | delivered | failed | refused
    tries: int
    status_code: int | None
    error: str | None
    first_tried_at: datetime
    last_tried_at: datetime
    duration_ms: float | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    """What the job page shows besides the job row."""

    extra: dict[str, Any]
    payload: Any
    payload_from: str  # "queue", "archive", "dead letter" or "" (gone)
    steps: list[Step] = field(default_factory=list)
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    fan_outs: list[FanOut] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    webhook_deliveries: list[WebhookDelivery] = field(default_factory=list)  # newest first
    webhook_delivery_count: int = 0  # all of them, beyond the newest shown


async def _rows(conn: psycopg.AsyncConnection[Any], kind: type[Any], query: str, *args: Any) -> list[Any]:
    async with conn.cursor(row_factory=class_row(kind)) as cur:
        await cur.execute(query, args)
        return await cur.fetchall()


async def _delivery_count(conn: psycopg.AsyncConnection[Any], job_id: UUID) -> int:
    row = await (await conn.execute(WEBHOOK_DELIVERY_COUNT, (job_id,))).fetchone()
    return int(row[0]) if row else 0


async def _exists(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    row = await (await conn.execute(TABLE_EXISTS, (f"pgmq.{table}",))).fetchone()
    return bool(row and row[0])


async def apayload(conn: psycopg.AsyncConnection[Any], queue: str, msg_id: int) -> tuple[Any, str]:
    """The job's payload and where it was found; (None, "") once the message is gone."""
    live = table_name(queue)
    archive = "a_" + live.removeprefix("q_")
    dead = table_name(dlq_name(queue))
    for where, table, query, key in (
        ("queue", live, LIVE_PAYLOAD.format(q=sql.Identifier(live)), msg_id),
        ("archive", archive, ARCHIVED_PAYLOAD.format(a=sql.Identifier(archive)), msg_id),
        ("dead letter", dead, DEAD_PAYLOAD.format(q=sql.Identifier(dead)), str(msg_id)),
    ):
        if not await _exists(conn, table):
            continue
        row = await (await conn.execute(query, (key,))).fetchone()
        if row is not None:
            return row[0], where
    return None, ""


async def aget_detail(conn: psycopg.AsyncConnection[Any], job_id: UUID, queue: str, msg_id: int) -> JobDetail:
    """The job page's extras for one job (its row read separately with queues.jobs.aget_job)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(EXTRA, (job_id,))
        extra = await cur.fetchone() or {}
    payload, found = await apayload(conn, queue, msg_id)
    hooks = await _rows(conn, WebhookDelivery, WEBHOOK_DELIVERIES, job_id, MAX_WEBHOOK_DELIVERIES)
    hooks_count = len(hooks) if len(hooks) < MAX_WEBHOOK_DELIVERIES else await _delivery_count(conn, job_id)
    return JobDetail(
        extra=extra,
        payload=payload,
        payload_from=found,
        steps=await _rows(conn, Step, STEPS, job_id),
        artifacts=await _rows(conn, ArtifactInfo, ARTIFACTS, job_id),
        fan_outs=await _rows(conn, FanOut, FAN_OUTS, job_id),
        children=await _rows(conn, Child, CHILDREN, job_id, MAX_CHILDREN),
        webhook_deliveries=hooks,
        webhook_delivery_count=hooks_count,
    )
