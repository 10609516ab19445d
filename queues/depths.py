"""Every queue's depth in one statement: what `pgmq-worker queues` prints and the gauges export.

`pgmq.metrics_all()` (pgmq 1.4 onwards, Supabase's too) reports each queue's length and oldest
age; 1.5 added the visible count. On 1.4 (`PgmqFeatures.metrics_visible` false) the visible
counts are read in one more statement over every queue table at once, counted as 1.5 counts
them (`vt <= now()`). A queue's dead letters are the length of its `<queue>_dlq`, from the same
rows. Dead-letter queues are not listed as queues of their own. Whether a queue is paused
(queues.pauses) is read beside them.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from db.pgmq_install import PgmqFeatures
from queues.names import dlq_name, is_dlq, table_name
from queues.pauses import paused
from queues.pgmq import QueueMetrics

ALL_METRICS = (
    "SELECT queue_name, queue_length, queue_visible_length, oldest_msg_age_sec"
    " FROM pgmq.metrics_all() ORDER BY queue_name"
)
ALL_METRICS_WITHOUT_VISIBLE = (
    "SELECT queue_name, queue_length, NULL::bigint, oldest_msg_age_sec"
    " FROM pgmq.metrics_all() ORDER BY queue_name"
)
VISIBLE_COUNT = sql.SQL("SELECT {name}::text, count(*) FROM pgmq.{q} WHERE vt <= now()")


def queue_depths(conn: psycopg.Connection[Any], features: PgmqFeatures) -> list[QueueMetrics]:
    """Depth, visible, in-flight, oldest age and dead letters of every queue, by name."""
    statement = ALL_METRICS if features.metrics_visible else ALL_METRICS_WITHOUT_VISIBLE
    rows = conn.execute(statement).fetchall()
    visible = {str(r[0]): int(r[2]) for r in rows if r[2] is not None}
    queues = [str(r[0]) for r in rows if not is_dlq(str(r[0]))]
    if not features.metrics_visible and queues:
        counts = sql.SQL(" UNION ALL ").join(
            VISIBLE_COUNT.format(name=sql.Literal(q), q=sql.Identifier(table_name(q))) for q in queues
        )
        visible = {str(name): int(n) for name, n in conn.execute(counts).fetchall()}
    lengths = {str(r[0]): int(r[1]) for r in rows}
    pauses = paused(conn)
    found: list[QueueMetrics] = []
    for name, depth, _visible, oldest in rows:
        queue = str(name)
        if is_dlq(queue):
            continue
        seen = min(visible.get(queue, 0), int(depth))  # two snapshots on 1.4: never more than the depth
        found.append(
            QueueMetrics(
                queue=queue,
                depth=int(depth),
                visible=seen,
                in_flight=int(depth) - seen,
                oldest_age_s=None if oldest is None else int(oldest),
                dead=lengths.get(dlq_name(queue), 0),
                paused=queue in pauses,
            )
        )
    return found
