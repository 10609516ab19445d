"""Waiters: idle, listening workers say which queues they wait on, so inserts there notify (0013)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from queues.names import table_name

# Idle, listening workers announce themselves so the insert trigger notifies (migration 0013).
# Rows of workers that died long ago are swept by whoever announces next.
# The announcement names every queue the worker waits on now: its rows for the others (queues
# paused since) go in the same statement, so inserts into a paused queue stop notifying for it.
ANNOUNCE_WAITING = """
WITH swept AS (DELETE FROM pgmq_worker.waiters WHERE until < now() - interval '10 minutes'),
dropped AS (
    DELETE FROM pgmq_worker.waiters WHERE worker = %(worker)s AND queue_table <> ALL(%(tables)s::text[])
)
INSERT INTO pgmq_worker.waiters AS w (queue_table, worker, until)
SELECT t, %(worker)s, now() + make_interval(secs => %(ttl)s) FROM unnest(%(tables)s::text[]) AS t
ON CONFLICT (queue_table, worker) DO UPDATE SET until = EXCLUDED.until
"""
WITHDRAW_WAITING = "DELETE FROM pgmq_worker.waiters WHERE worker = %s"


async def announce_waiting(
    conn: psycopg.AsyncConnection[Any], worker: str, queues: Sequence[str], ttl_s: float
) -> None:
    """This worker waits on `queues` (and no other) for the next `ttl_s` seconds: their inserts notify."""
    await conn.execute(
        ANNOUNCE_WAITING, {"worker": worker, "tables": [table_name(q) for q in queues], "ttl": ttl_s}
    )


async def withdraw_waiting(conn: psycopg.AsyncConnection[Any], worker: str) -> None:
    """This worker no longer waits (it is stopping)."""
    await conn.execute(WITHDRAW_WAITING, (worker,))
