"""Fan-out / fan-in statements: spawn a parent's children, check on them, close the fan-out.

Migration 0011 holds the rest in the database itself: the trigger that counts each child as it
ends, sends the next held-back one and wakes the parent, so it happens in the child's own settle
transaction whichever worker (or client) settles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from db import storable

CREATE = """
INSERT INTO pgmq_worker.fan_outs (parent_id, name, parent_queue, parent_msg_id, child_queue, total,
    max_running, child_timeout_s, child_max_attempts, owner, progress_from, progress_to, deadline)
SELECT %(parent)s, %(name)s, %(parent_queue)s, %(parent_msg_id)s, %(child_queue)s, %(total)s,
    %(max_running)s, %(timeout_s)s, %(max_attempts)s, j.owner, %(progress_from)s, %(progress_to)s,
    now() + make_interval(secs => %(deadline_s)s)
FROM pgmq_worker.jobs AS j WHERE j.id = %(parent)s
"""
HOLD = """
INSERT INTO pgmq_worker.fan_out_pending (parent_id, name, child_index, body)
SELECT %(parent)s, %(name)s, c.i - 1, c.body FROM unnest(%(bodies)s::jsonb[]) WITH ORDINALITY AS c(body, i)
"""
SEND = "SELECT pgmq_worker.fan_out_send(%s, %s, %s)"
# FOR UPDATE: a child's settle updates this row first too, so the parent's decision to sleep
# until its deadline and the last child's wake-up cannot cross (see worker.settle, Waiting).
LOCK = """
SELECT total, succeeded, failed, status, now() >= deadline AS past_deadline,
    greatest(0, extract(epoch FROM deadline - now()))::float8 AS remaining_s
FROM pgmq_worker.fan_outs WHERE parent_id = %s AND name = %s FOR UPDATE
"""
CLOSE = (
    "UPDATE pgmq_worker.fan_outs SET status = 'closed', closed_at = now()"
    " WHERE parent_id = %s AND name = %s AND status = 'open'"
)
DROP_PENDING = "DELETE FROM pgmq_worker.fan_out_pending WHERE parent_id = %s AND name = %s"
# Children still queued or running at the deadline: their messages deleted (a worker running one
# finds its delivery gone and settles nothing), their rows cancelled with the reason.
CANCEL_UNFINISHED = """
WITH gone AS (
    SELECT j.id, pgmq.delete(j.queue, j.msg_id) AS deleted FROM pgmq_worker.jobs AS j
    WHERE j.parent_id = %(parent)s AND j.fan_out = %(name)s
        AND j.status NOT IN ('succeeded', 'dead', 'cancelled')
)
UPDATE pgmq_worker.jobs AS j SET status = 'cancelled', error = %(error)s, finished_at = now(),
    updated_at = now()
FROM gone WHERE j.id = gone.id
"""
CHILDREN = """
SELECT child_index AS index, id AS job_id, status, attempts - deferrals AS attempts, result, error
FROM pgmq_worker.jobs WHERE parent_id = %s AND fan_out = %s ORDER BY child_index
"""


@dataclass(frozen=True, slots=True)
class FanOutState:
    """A fan-out's counts as its row holds them (locked for the caller's transaction)."""

    total: int
    succeeded: int
    failed: int
    status: str
    past_deadline: bool
    remaining_s: float

    @property
    def complete(self) -> bool:
        """Every child has ended."""
        return self.succeeded + self.failed >= self.total


@dataclass(frozen=True, slots=True)
class ChildRow:
    """One child's job row, as the fan-in reports it."""

    index: int
    job_id: UUID
    status: str
    attempts: int
    result: Any
    error: Any


@dataclass(frozen=True, slots=True)
class ChildPolicy:
    """How the children run: their timeout and attempts (None: the handler's), how many at once."""

    max_running: int
    timeout_s: float | None
    max_attempts: int | None
    deadline_s: float


async def spawn(
    conn: psycopg.AsyncConnection[Any],
    *,
    parent: UUID,
    name: str,
    parent_queue: str,
    parent_msg_id: int,
    child_queue: str,
    bodies: Sequence[dict[str, Any]],
    policy: ChildPolicy,
    progress: tuple[int, int],
) -> int:
    """Record the fan-out, hold every child, send the first `max_running`; returns how many were sent.

    Run it inside the caller's transaction: the children exist if and only if the fan-out does.
    """
    await conn.execute(
        CREATE,
        {
            "parent": parent,
            "name": name,
            "parent_queue": parent_queue,
            "parent_msg_id": parent_msg_id,
            "child_queue": child_queue,
            "total": len(bodies),
            "max_running": policy.max_running,
            "timeout_s": policy.timeout_s,
            "max_attempts": policy.max_attempts,
            "progress_from": progress[0],
            "progress_to": progress[1],
            "deadline_s": policy.deadline_s,
        },
    )
    await conn.execute(HOLD, {"parent": parent, "name": name, "bodies": [storable.jsonb(b) for b in bodies]})
    cur = await conn.execute(SEND, (parent, name, policy.max_running))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def lock(conn: psycopg.AsyncConnection[Any], parent: UUID, name: str) -> FanOutState | None:
    """The fan-out's state, its row locked until the transaction ends; None if there is none."""
    async with conn.cursor(row_factory=class_row(FanOutState)) as cur:
        await cur.execute(LOCK, (parent, name))
        return await cur.fetchone()


async def close(conn: psycopg.AsyncConnection[Any], parent: UUID, name: str, reason: str) -> None:
    """Close the fan-out: unsent children dropped, unfinished ones cancelled with `reason`."""
    await conn.execute(CLOSE, (parent, name))
    await conn.execute(DROP_PENDING, (parent, name))
    error = storable.jsonb({"type": "FanOutDeadline", "message": reason})
    await conn.execute(CANCEL_UNFINISHED, {"parent": parent, "name": name, "error": error})


async def children(conn: psycopg.AsyncConnection[Any], parent: UUID, name: str) -> list[ChildRow]:
    """The fan-out's children that were sent, by index."""
    async with conn.cursor(row_factory=class_row(ChildRow)) as cur:
        await cur.execute(CHILDREN, (parent, name))
        return await cur.fetchall()
