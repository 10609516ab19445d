"""Cancellation statements the worker runs: which held jobs are marked, a cancelled parent's fan-outs.

The cancel itself (`pgmq_worker.cancel_job`, migration 0019) is called through queues.cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg

# By primary key: the ids are the jobs this worker holds now (at most its concurrency).
REQUESTED = "SELECT id FROM pgmq_worker.jobs WHERE id = ANY(%s::uuid[]) AND cancel_requested_at IS NOT NULL"
# A cancelled parent sends no more held-back children: a closed fan-out's trigger does nothing.
CLOSE_FAN_OUTS = (
    "UPDATE pgmq_worker.fan_outs SET status = 'closed', closed_at = now()"
    " WHERE parent_id = %s AND status = 'open'"
)
DROP_PENDING = "DELETE FROM pgmq_worker.fan_out_pending WHERE parent_id = %s"


async def requested(conn: psycopg.AsyncConnection[Any], job_ids: Sequence[UUID]) -> set[UUID]:
    """Of these jobs, those someone asked to cancel."""
    cur = await conn.execute(REQUESTED, (list(job_ids),))
    return {row[0] for row in await cur.fetchall()}


async def close_fan_outs(conn: psycopg.AsyncConnection[Any], parent: UUID) -> None:
    """Close a cancelled parent's open fan-outs and drop the children it never sent (autocommit)."""
    await conn.execute(CLOSE_FAN_OUTS, (parent,))
    await conn.execute(DROP_PENDING, (parent,))
