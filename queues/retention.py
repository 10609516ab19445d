"""Retention: delete finished job rows and archived messages older than an age, in small batches.

A job row is finished once `succeeded`, `dead` or `cancelled`; it goes with its steps, artifacts
and fan-out counts (ON DELETE CASCADE). Archived messages are pgmq's `a_<queue>` rows, by their
`archived_at` (every pgmq version indexes it). Each batch is one short statement in its own
transaction (the connection is in autocommit), through migration 0020's SECURITY DEFINER
functions, so the worker's role may prune without being allowed to delete rows itself, and no
lock is held for longer than one batch. `pgmq-worker prune` and the worker's pruner
(worker/retention.py) both call this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

FINISHED = ("succeeded", "dead", "cancelled")  # migration 0020's prune_jobs says the same
BATCH = 1000

CUTOFF = "SELECT now() - %s::interval"
# Every queue that may have something to prune: pgmq's queues (their archives, dead-letter
# queues' too) and the queues of finished job rows (a dropped queue's rows stay in jobs).
QUEUES = "SELECT queue_name FROM pgmq.meta UNION SELECT q FROM pgmq_worker.finished_queues() AS q ORDER BY 1"
PRUNE_JOBS = "SELECT pgmq_worker.prune_jobs(%s, %s, %s)"
PRUNE_ARCHIVE = "SELECT pgmq_worker.prune_archive(%s, %s, %s)"
BatchStep = Callable[["psycopg.AsyncConnection[Any]", str, datetime, int], Awaitable[int]]
"""One batch of one kind (aprune_jobs, aprune_archive): connection, queue, cutoff, batch size."""
CLAIM = "SELECT pgmq_worker.claim_retention(%s, %s::interval)"
PRUNED = "SELECT pgmq_worker.retention_pruned(%s)"
RELEASE = "SELECT pgmq_worker.release_retention(%s)"


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one queue lost: finished job rows and archived messages."""

    queue: str
    jobs: int
    archived: int

    def as_json(self) -> dict[str, Any]:
        """`{"queue", "jobs", "archived"}`."""
        return {"queue": self.queue, "jobs": self.jobs, "archived": self.archived}


def _count(row: Any) -> int:
    return int(row[0]) if row and row[0] is not None else 0


def _cutoff(conn: psycopg.Connection[Any], older_than: timedelta) -> datetime:
    row = conn.execute(CUTOFF, (older_than,)).fetchone()
    assert row is not None  # noqa: S101  SELECT returns one row
    return row[0]  # type: ignore[no-any-return]


def prune(
    conn: psycopg.Connection[Any], older_than: timedelta, queue: str | None = None, batch: int = BATCH
) -> list[Pruned]:
    """Delete what finished before `older_than` ago, for `queue` or every queue; per queue, how much."""
    cutoff = _cutoff(conn, older_than)
    names = [queue] if queue is not None else [str(r[0]) for r in conn.execute(QUEUES).fetchall()]
    pruned = []
    for name in names:
        jobs = archived = 0
        while (n := _count(conn.execute(PRUNE_JOBS, (name, cutoff, batch)).fetchone())) > 0:
            jobs += n
        while (n := _count(conn.execute(PRUNE_ARCHIVE, (name, cutoff, batch)).fetchone())) > 0:
            archived += n
        pruned.append(Pruned(name, jobs, archived))
    return pruned


async def acutoff(conn: psycopg.AsyncConnection[Any], older_than: timedelta) -> datetime:
    """now() - older_than, by the database's clock (one clock for every worker)."""
    cur = await conn.execute(CUTOFF, (older_than,))
    row = await cur.fetchone()
    assert row is not None  # noqa: S101  SELECT returns one row
    return row[0]  # type: ignore[no-any-return]


async def aqueues(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The queues a pruning pass visits."""
    cur = await conn.execute(QUEUES)
    return [str(r[0]) for r in await cur.fetchall()]


async def aprune_jobs(conn: psycopg.AsyncConnection[Any], queue: str, cutoff: datetime, batch: int) -> int:
    """One batch of finished job rows of `queue` (async); how many went."""
    cur = await conn.execute(PRUNE_JOBS, (queue, cutoff, batch))
    return _count(await cur.fetchone())


async def aprune_archive(conn: psycopg.AsyncConnection[Any], queue: str, cutoff: datetime, batch: int) -> int:
    """One batch of archived messages of `queue` (async); how many went."""
    cur = await conn.execute(PRUNE_ARCHIVE, (queue, cutoff, batch))
    return _count(await cur.fetchone())


async def aclaim(conn: psycopg.AsyncConnection[Any], holder: str, ttl: timedelta) -> bool:
    """Take or keep the pruner's lease for `ttl`: True when `holder` is the one pruner now."""
    cur = await conn.execute(CLAIM, (holder, ttl))
    row = await cur.fetchone()
    return bool(row and row[0])


async def arelease(conn: psycopg.AsyncConnection[Any], holder: str) -> None:
    """Give the pruner's lease up (a worker stopping), so another worker takes it at its next try."""
    await conn.execute(RELEASE, (holder,))


async def apruned(conn: psycopg.AsyncConnection[Any], holder: str) -> None:
    """Stamp the end of a pruning pass on the lease row."""
    await conn.execute(PRUNED, (holder,))
