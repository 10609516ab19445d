"""Job steps: what `ctx.step` stored for a job, one row per step name (pgmq_worker.job_steps)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from db import storable

STEPS = "SELECT name, status, attempts, output FROM pgmq_worker.job_steps WHERE job_id = %s"
START_STEP = (
    "INSERT INTO pgmq_worker.job_steps AS s (job_id, name, status, attempts, started_at)"
    " VALUES (%s, %s, 'running', 1, now())"
    " ON CONFLICT (job_id, name) DO UPDATE SET status = 'running', attempts = s.attempts + 1,"
    " started_at = now(), error = NULL WHERE s.status <> 'done'"
    " RETURNING attempts"
)
FINISH_STEP = (
    "UPDATE pgmq_worker.job_steps SET status = 'done', output = %s, finished_at = now()"
    " WHERE job_id = %s AND name = %s AND status <> 'done'"
)
FAIL_STEP = (
    "UPDATE pgmq_worker.job_steps SET status = 'failed', error = %s, finished_at = now(),"
    " attempts = greatest(attempts - %s, 0)"
    " WHERE job_id = %s AND name = %s AND status <> 'done'"
)


async def load_steps(conn: psycopg.AsyncConnection[Any], job_id: UUID) -> dict[str, tuple[str, int, Any]]:
    """The job's steps so far: name -> (status, attempts, output)."""
    cur = await conn.execute(STEPS, (job_id,))
    return {
        str(name): (status, int(attempts), output) for name, status, attempts, output in await cur.fetchall()
    }


async def start_step(conn: psycopg.AsyncConnection[Any], job_id: UUID, name: str) -> int | None:
    """Count a start of the step: its attempt number, or None if it finished meanwhile."""
    cur = await conn.execute(START_STEP, (job_id, name))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def finish_step(conn: psycopg.AsyncConnection[Any], job_id: UUID, name: str, output: Any) -> None:
    """Record the step's output (a JSON value); the first finish wins."""
    await conn.execute(FINISH_STEP, (storable.jsonb(output), job_id, name))


async def fail_step(
    conn: psycopg.AsyncConnection[Any],
    job_id: UUID,
    name: str,
    error: dict[str, Any],
    *,
    counted: bool = True,
) -> None:
    """Record why the step's attempt failed; `counted=False` (a deferral) takes back its start."""
    await conn.execute(FAIL_STEP, (storable.jsonb(error), 0 if counted else 1, job_id, name))
