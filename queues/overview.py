"""The dashboard's queues page: each queue's messages now and its job rows over the last hour.

Messages (ready, delayed, leased, oldest ready age, dead letters) come from pgmq's tables, read
the same on pgmq 1.4.4, 1.5.1 and the 1.13 SQL; in flight, throughput, failure rate and
durations come from the job rows: the chart's buckets here (`jobs_finished_idx`, migration 0020),
the rates, percentiles and stuck jobs from queues/stats.py (what `pgmq-worker stats` prints);
a queue's pause from queues/pauses.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from queues.names import DLQ_SUFFIX, is_dlq, table_name
from queues.pauses import Pause, apaused
from queues.stats import aqueue_stats

BUCKETS: Final = 12  # the chart: 5-minute buckets over the hour
WINDOW: Final = timedelta(hours=1)
QUEUES = "SELECT queue_name FROM pgmq.meta ORDER BY queue_name"
# One statement for every queue (a UNION ALL of one part per queue table): one round trip, however
# many queues there are. Dead-letter queues report their count as `ready`.
MESSAGES = sql.SQL(
    "SELECT {name}::text, count(*) FILTER (WHERE vt <= clock_timestamp()),"
    " count(*) FILTER (WHERE vt > clock_timestamp() AND read_ct = 0),"
    " count(*) FILTER (WHERE vt > clock_timestamp() AND read_ct > 0),"
    " extract(epoch FROM clock_timestamp() - min(enqueued_at) FILTER (WHERE vt <= clock_timestamp()))"
    " FROM pgmq.{q}"
)
RUNNING = "SELECT queue, count(*) FROM pgmq_worker.jobs WHERE status = 'running' GROUP BY queue"
# Bucket 0 is the oldest five minutes of the window, BUCKETS - 1 the newest. Per named queue, so
# the read is a range of jobs_finished_idx (queue, finished_at) for each, not a scan of the table.
LAST_HOUR = """
SELECT queue,
    least(%(buckets)s - 1, floor(extract(epoch FROM finished_at - (now() - %(window)s))
        / extract(epoch FROM %(window)s) * %(buckets)s))::integer AS bucket,
    count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE status = 'dead') AS dead,
    count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM pgmq_worker.jobs
WHERE queue = ANY(%(queues)s::text[]) AND finished_at >= now() - %(window)s
GROUP BY 1, 2
"""


@dataclass(slots=True)
class QueueOverview:
    """One queue's numbers for the queues page."""

    queue: str
    ready: int = 0
    delayed: int = 0
    leased: int = 0  # invisible after a read: running, or waiting for a retry
    oldest_s: float | None = None
    dead_letters: int = 0
    in_flight: int = 0  # job rows `running`
    succeeded: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    failed: list[int] = field(default_factory=lambda: [0] * BUCKETS)  # dead (and cancelled)
    p50_ms: float | None = None
    p95_ms: float | None = None
    success_rate: float | None = None  # queues/stats.py: succeeded / (succeeded + dead)
    stuck: int = 0  # running past their lease with no renewal
    pause: Pause | None = None  # paused: no worker reads it

    @property
    def finished(self) -> int:
        """Jobs that finished in the window."""
        return sum(self.succeeded) + sum(self.failed)

    @property
    def failure_rate(self) -> float | None:
        """Dead over dead and succeeded, in the window (queues/stats.py); None when none finished."""
        return None if self.success_rate is None else 1 - self.success_rate

    def as_json(self) -> dict[str, Any]:
        """What the live stream sends for this queue."""
        return {
            "queue": self.queue,
            "ready": self.ready,
            "delayed": self.delayed,
            "leased": self.leased,
            "oldest_s": self.oldest_s,
            "dead_letters": self.dead_letters,
            "in_flight": self.in_flight,
            "finished": self.finished,
            "failure_rate": self.failure_rate,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "stuck": self.stuck,
            "pause": None if self.pause is None else self.pause.as_json(),
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


async def aqueues(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The work queues (dead-letter queues left out)."""
    names = [str(r[0]) for r in await (await conn.execute(QUEUES)).fetchall()]
    return [n for n in names if not is_dlq(n)]


async def aoverview(conn: psycopg.AsyncConnection[Any]) -> list[QueueOverview]:
    """Every work queue's numbers, by name."""
    all_names = {str(r[0]) for r in await (await conn.execute(QUEUES)).fetchall()}
    found = {n: QueueOverview(n) for n in sorted(all_names) if not is_dlq(n)}
    if all_names:
        parts = [
            MESSAGES.format(name=sql.Literal(n), q=sql.Identifier(table_name(n))) for n in sorted(all_names)
        ]
        for name, ready, delayed, leased, oldest in await (
            await conn.execute(sql.SQL(" UNION ALL ").join(parts))
        ).fetchall():
            if name in found:
                q = found[name]
                q.ready, q.delayed, q.leased = int(ready), int(delayed), int(leased)
                q.oldest_s = None if oldest is None else float(oldest)
            elif is_dlq(name) and name.removesuffix(DLQ_SUFFIX) in found:
                found[name.removesuffix(DLQ_SUFFIX)].dead_letters = int(ready) + int(delayed) + int(leased)
    for queue, pause in (await apaused(conn)).items():
        if queue in found:
            found[queue].pause = pause
    for queue, running in await (await conn.execute(RUNNING)).fetchall():
        if queue in found:
            found[queue].in_flight = int(running)
    window = {"window": WINDOW, "buckets": BUCKETS, "queues": list(found)}
    for queue, bucket, succeeded, dead, cancelled in await (await conn.execute(LAST_HOUR, window)).fetchall():
        if queue in found and 0 <= bucket < BUCKETS:
            found[queue].succeeded[bucket] += int(succeeded)
            found[queue].failed[bucket] += int(dead) + int(cancelled)
    for stats in await aqueue_stats(conn, since=WINDOW):
        if stats.queue in found:
            q = found[stats.queue]
            q.p50_ms, q.p95_ms, q.success_rate = (
                stats.duration_p50_ms,
                stats.duration_p95_ms,
                stats.success_rate,
            )
            q.stuck = stats.stuck
    return list(found.values())
