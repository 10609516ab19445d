"""Cancelling a job: at once when it has not started, by a mark its worker acts on when it runs.

`cancel(conn, job_id)` (and `acancel`) calls `pgmq_worker.cancel_job` (migration 0019), which in
one transaction and under the locks the worker's own statements take decides and does it:

- not started (queued, delayed, waiting for a retry): its message is deleted and the job ends
  `cancelled` now (`CancelResult.action == "cancelled"`);
- running: the job is marked (`cancel_requested_at`); the worker holding it stops the handler
  within about a heartbeat interval and ends it `cancelled`, and a later read of its message
  (a lost lease, a crash) never runs it (`action == "requested"`);
- finished: `JobFinished` with its status; unknown: `UnknownJob`.

A fan-out parent's unfinished children are then cancelled the same way, each in a transaction
of its own after the parent's (a child's settle locks its own rows before its parent's fan-out
row, so taking them together could deadlock); children never sent are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg

from queues.errors import QueueError
from queues.jobs import Job, aget_job, get_job

CANCEL = "SELECT outcome, status, children FROM pgmq_worker.cancel_job(%s)"


class UnknownJob(QueueError, LookupError):
    """No such job."""


class JobFinished(QueueError):
    """The job has already finished: there is nothing to cancel."""

    def __init__(self, job_id: UUID, status: str) -> None:
        super().__init__(f"job {job_id} has already finished: {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel did: `cancelled` (ended now) or `requested` (running: its worker stops it)."""

    job: Job  # the row as the cancel left it
    action: Action
    children: int = 0  # unfinished fan-out children cancelled (or marked) with it, at any depth

    @property
    def immediate(self) -> bool:
        """True when the job ended `cancelled` at once."""
        return self.action == "cancelled"


Action = Literal["cancelled", "requested"]


def _decided(job_id: UUID, row: tuple[Any, ...] | None) -> tuple[Action, list[UUID]]:
    outcome, status, children = row if row is not None else ("unknown", None, None)
    if outcome == "unknown":
        raise UnknownJob(f"no job {job_id}")
    if outcome == "finished":
        raise JobFinished(job_id, str(status))
    return ("cancelled" if outcome == "cancelled" else "requested"), list(children or [])


def cancel(conn: psycopg.Connection[Any], job_id: UUID) -> CancelResult:
    """Cancel the job (see the module's docstring); UnknownJob or JobFinished when there is nothing to do.

    Commits on an autocommit connection; inside the caller's transaction it is part of it (the
    children are then cancelled in that transaction too).
    """
    with conn.transaction():
        action, children = _decided(job_id, conn.execute(CANCEL, (job_id,)).fetchone())
    count = _cancel_children(conn, children)
    job = get_job(conn, job_id)
    if job is None:  # deleted in between (retention): it was cancelled all the same
        raise UnknownJob(f"no job {job_id}")
    return CancelResult(job, action, count)


def _cancel_children(conn: psycopg.Connection[Any], children: list[UUID]) -> int:
    count = 0
    for child in children:
        try:
            count += 1 + cancel(conn, child).children
        except (UnknownJob, JobFinished):  # it ended on its own meanwhile
            continue
    return count


async def acancel(conn: psycopg.AsyncConnection[Any], job_id: UUID) -> CancelResult:
    """`cancel` for an async connection."""
    async with conn.transaction():
        cur = await conn.execute(CANCEL, (job_id,))
        action, children = _decided(job_id, await cur.fetchone())
    count = await acancel_children(conn, children)
    job = await aget_job(conn, job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    return CancelResult(job, action, count)


async def acancel_children(conn: psycopg.AsyncConnection[Any], children: list[UUID]) -> int:
    """Cancel each job in `children` (and theirs); how many were still unfinished."""
    count = 0
    for child in children:
        try:
            count += 1 + (await acancel(conn, child)).children
        except (UnknownJob, JobFinished):
            continue
    return count


UNFINISHED_CHILDREN = (
    "SELECT id FROM pgmq_worker.jobs WHERE parent_id = %s"
    " AND status NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY fan_out, child_index"
)


async def acancel_unfinished_children(conn: psycopg.AsyncConnection[Any], parent: UUID) -> int:
    """Cancel a cancelled parent's children still unfinished (the worker, after its settle)."""
    cur = await conn.execute(UNFINISHED_CHILDREN, (parent,))
    return await acancel_children(conn, [r[0] for r in await cur.fetchall()])
