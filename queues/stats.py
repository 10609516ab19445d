"""Per queue over a window, from the job rows: the numbers `pgmq-worker stats` and the dashboard show.

Over the window (the last `since`): jobs that `succeeded` and went `dead` (finished in it), those
`failed` and waiting for a retry and those `cancelled` (last changed in it); the success rate of
the finished ones (succeeded / (succeeded + dead)); the duration of their last attempt (from its
start to the settle: `attempt_started_at` to `finished_at`) at p50, p95 and p99; the wait of jobs
that started in it (enqueued to the first start, so a delayed job's delay counts) at p50 and
p95 (not counting a job queued again since); and the job webhooks that failed in it, of jobs
that finished in it or are running or failed.
Besides the window: `stuck`, the running jobs whose lease passed without a renewal
(`pgmq_worker.stuck_jobs()`, migration 0018).

Every queue in `pgmq.meta` has a row (zeros when nothing happened), and so has any other queue
whose job rows the window counts. One statement that reads only the rows the window can count,
through the finished-time and status indexes (0020, 0021): on 1,000,000 job rows it reads the
hour's few thousand, where a scan of the table took 160-220 ms (bench/dashboard_pages.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import psycopg

MAX_SINCE: Final = timedelta(days=36_500)  # a longer window is the same: everything

QUEUE_STATS = """
WITH RECURSIVE w AS (SELECT now() - %(since)s::interval AS start),
-- The queues that have job rows: one probe of jobs_queue_created_idx per queue (a loose scan).
job_queues AS (
    (SELECT queue FROM pgmq_worker.jobs ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM pgmq_worker.jobs AS j WHERE j.queue > q.queue ORDER BY j.queue LIMIT 1)
    FROM job_queues AS q WHERE q.queue IS NOT NULL
),
wanted AS (
    SELECT CASE WHEN %(queue)s::text IS NULL THEN ARRAY(SELECT queue FROM job_queues WHERE queue IS NOT NULL)
        ELSE ARRAY[%(queue)s::text] END AS queues
),
named AS (
    SELECT queue_name::text AS queue FROM pgmq.meta
    WHERE queue_name NOT LIKE '%%\\_dlq' AND (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
    UNION SELECT %(queue)s::text WHERE %(queue)s::text IS NOT NULL
),
-- The rows the window can count, read through indexes (never the whole table): those finished in
-- it (jobs_finished_idx, per queue), and the running and failed ones changed in it
-- (jobs_status_created_idx; few beside the finished: a failed job is retried within its backoff).
-- A job that started in the window has finished in it or is running or failed, unless it is queued
-- again (released at a worker's stop, deferred): the wait leaves those few out, since the queued
-- rows are the backlog, which can be millions.
recent AS (
    SELECT j.queue, j.status, j.finished_at, j.attempt_started_at, j.started_at, j.created_at,
        j.updated_at, j.webhook_failures, j.webhook_failed_at
    FROM pgmq_worker.jobs AS j, w, wanted
    WHERE j.queue = ANY(wanted.queues) AND j.finished_at >= w.start
    UNION ALL
    SELECT j.queue, j.status, j.finished_at, j.attempt_started_at, j.started_at, j.created_at,
        j.updated_at, j.webhook_failures, j.webhook_failed_at
    FROM pgmq_worker.jobs AS j, w, wanted
    WHERE j.status IN ('running', 'failed') AND j.queue = ANY(wanted.queues)
        AND j.updated_at >= w.start AND (j.finished_at IS NULL OR j.finished_at < w.start)
),
seen AS (
    SELECT j.queue,
        count(*) FILTER (WHERE j.status = 'succeeded' AND j.finished_at >= w.start) AS succeeded,
        count(*) FILTER (WHERE j.status = 'failed' AND j.updated_at >= w.start) AS failed,
        count(*) FILTER (WHERE j.status = 'dead' AND j.finished_at >= w.start) AS dead,
        count(*) FILTER (WHERE j.status = 'cancelled' AND j.finished_at >= w.start) AS cancelled,
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
            ORDER BY extract(epoch FROM j.finished_at - j.attempt_started_at)
        ) FILTER (WHERE j.status IN ('succeeded', 'dead') AND j.finished_at >= w.start) AS duration_s,
        percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
            ORDER BY extract(epoch FROM j.started_at - j.created_at)
        ) FILTER (WHERE j.started_at >= w.start) AS wait_s,
        coalesce(sum(j.webhook_failures) FILTER (WHERE j.webhook_failed_at >= w.start), 0) AS webhook_failures
    FROM recent AS j, w
    GROUP BY j.queue
)
SELECT queue, coalesce(seen.succeeded, 0), coalesce(seen.failed, 0), coalesce(seen.dead, 0),
    coalesce(seen.cancelled, 0), seen.duration_s, seen.wait_s, coalesce(seen.webhook_failures, 0),
    coalesce(s.stuck, 0)
FROM named
FULL JOIN seen USING (queue)
FULL JOIN pgmq_worker.stuck_jobs(%(queue)s::text) AS s (queue, stuck) USING (queue)
ORDER BY queue
"""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's numbers over the window (see the module's docstring); durations in milliseconds."""

    queue: str
    since: timedelta
    succeeded: int
    failed: int
    dead: int
    cancelled: int
    duration_p50_ms: float | None
    duration_p95_ms: float | None
    duration_p99_ms: float | None
    wait_p50_ms: float | None
    wait_p95_ms: float | None
    webhook_failures: int
    stuck: int

    @property
    def success_rate(self) -> float | None:
        """Succeeded of the finished (succeeded or dead); None when none finished."""
        finished = self.succeeded + self.dead
        return self.succeeded / finished if finished else None

    def as_json(self) -> dict[str, Any]:
        """The JSON object `pgmq-worker stats --json` prints (and a dashboard may serve)."""
        return {
            "queue": self.queue,
            "since_s": self.since.total_seconds(),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "success_rate": self.success_rate,
            "duration_p50_ms": self.duration_p50_ms,
            "duration_p95_ms": self.duration_p95_ms,
            "duration_p99_ms": self.duration_p99_ms,
            "wait_p50_ms": self.wait_p50_ms,
            "wait_p95_ms": self.wait_p95_ms,
            "stuck": self.stuck,
            "webhook_failures": self.webhook_failures,
        }


def _window(since: timedelta) -> timedelta:
    if since <= timedelta(0):
        raise ValueError(f"since must be positive, got {since}")
    return min(since, MAX_SINCE)


def _ms(seconds: Sequence[float | None] | None, n: int) -> list[float | None]:
    """n percentiles in seconds (None: no job) as milliseconds, rounded to the microsecond."""
    if seconds is None:
        return [None] * n
    return [None if s is None else round(float(s) * 1000, 3) for s in seconds]


def _row(row: Sequence[Any], since: timedelta) -> QueueStats:
    queue, succeeded, failed, dead, cancelled, duration_s, wait_s, hooks, stuck = row
    p50, p95, p99 = _ms(duration_s, 3)
    w50, w95 = _ms(wait_s, 2)
    return QueueStats(
        str(queue), since, int(succeeded), int(failed), int(dead), int(cancelled),
        p50, p95, p99, w50, w95, int(hooks), int(stuck),
    )  # fmt: skip


def queue_stats(
    conn: psycopg.Connection[Any], *, queue: str | None = None, since: timedelta = timedelta(hours=1)
) -> list[QueueStats]:
    """Every queue's numbers over the last `since` (or only `queue`'s), by queue name."""
    window = _window(since)
    rows = conn.execute(QUEUE_STATS, {"queue": queue, "since": window}).fetchall()
    return [_row(r, window) for r in rows]


async def aqueue_stats(
    conn: psycopg.AsyncConnection[Any], *, queue: str | None = None, since: timedelta = timedelta(hours=1)
) -> list[QueueStats]:
    """`queue_stats` on an async connection (the web process)."""
    window = _window(since)
    cur = await conn.execute(QUEUE_STATS, {"queue": queue, "since": window})
    return [_row(r, window) for r in await cur.fetchall()]
