"""Schedule ticks: the scheduler's statements on pgmq_worker.schedule_ticks and .schedules (0022).

`claim` is the exactly-once step: the tick's row and its message in one transaction, the row's
primary key (schedule, tick) deciding between workers (see the migration).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from db import storable
from queues import job_sends, pgmq
from worker.schedules import Schedule

CLAIM = (
    "INSERT INTO pgmq_worker.schedule_ticks (schedule, tick, queue) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING RETURNING tick"
)
NOTE_SENT = "UPDATE pgmq_worker.schedule_ticks SET msg_id = %s, job_id = %s WHERE schedule = %s AND tick = %s"
LAST_TICK = "SELECT max(tick) FROM pgmq_worker.schedule_ticks WHERE schedule = %s"
LAST_TICKS = (
    "SELECT schedule, max(tick) FROM pgmq_worker.schedule_ticks WHERE schedule = ANY(%s) GROUP BY schedule"
)
# A delivery's tick. msg_id restarts when a queue is made again: the newest row is the message's.
TICK_OF = (
    "SELECT schedule, tick FROM pgmq_worker.schedule_ticks WHERE queue = %s AND msg_id = %s"
    " ORDER BY sent_at DESC LIMIT 1"
)
# Keep a day of ticks (a message retried for longer loses ctx.scheduled_at), and always the newest:
# it is where catch-up starts.
PRUNE = (
    "DELETE FROM pgmq_worker.schedule_ticks WHERE schedule = %(schedule)s AND tick < %(before)s"
    " AND tick < (SELECT max(tick) FROM pgmq_worker.schedule_ticks WHERE schedule = %(schedule)s)"
)
DECLARE = (
    "INSERT INTO pgmq_worker.schedules (name, queue, cron, timezone, payload, catch_up)"
    " VALUES (%(name)s, %(queue)s, %(cron)s, %(timezone)s, %(payload)s, %(catch_up)s)"
    " ON CONFLICT (name) DO UPDATE SET queue = EXCLUDED.queue, cron = EXCLUDED.cron,"
    " timezone = EXCLUDED.timezone, payload = EXCLUDED.payload, catch_up = EXCLUDED.catch_up,"
    " declared_at = now()"
)


async def claim(
    conn: psycopg.AsyncConnection[Any], declared: Schedule, tick: datetime, *, job_rows: bool
) -> int | None:
    """Send the tick's message if no worker has: its msg_id, or None when the tick was taken.

    One transaction: the tick's row, the message (with its job row when the queue keeps them)
    and the row's note of both. A queue that does not exist rolls it all back (LookupError).
    """
    body = storable.dumps(declared.payload)
    async with conn.transaction():
        cur = await conn.execute(CLAIM, (declared.name, tick, declared.queue))
        if await cur.fetchone() is None:
            return None  # another worker sent it (its transaction committed before our insert)
        job_id = None
        if job_rows:
            sent = await job_sends.asend_job(conn, declared.queue, body, 0, owner=None, key=None)
            job_id, msg_id = sent if sent is not None else (None, None)
        else:
            msg_id = await pgmq.asend_if_exists(conn, declared.queue, body)
        if msg_id is None:
            raise LookupError(f"no queue named {declared.queue!r}")
        await conn.execute(NOTE_SENT, (msg_id, job_id, declared.name, tick))
        return msg_id


async def last_tick(conn: psycopg.AsyncConnection[Any], name: str) -> datetime | None:
    """The newest tick of the schedule any worker sent (None: never, or not within what is kept)."""
    cur = await conn.execute(LAST_TICK, (name,))
    row = await cur.fetchone()
    return None if row is None else row[0]


def last_ticks(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, datetime]:
    """The newest tick sent of each named schedule that has one (the `schedules` command)."""
    return {str(r[0]): r[1] for r in conn.execute(LAST_TICKS, (names,)).fetchall()}


async def tick_of(conn: psycopg.AsyncConnection[Any], queue: str, msg_id: int) -> tuple[str, datetime] | None:
    """(schedule, tick) of the message a schedule sent, or None for any other message."""
    cur = await conn.execute(TICK_OF, (queue, msg_id))
    row = await cur.fetchone()
    return None if row is None else (str(row[0]), row[1])


async def prune(conn: psycopg.AsyncConnection[Any], name: str, before: datetime) -> int:
    """Delete the schedule's ticks before `before`, keeping its newest; how many went."""
    cur = await conn.execute(PRUNE, {"schedule": name, "before": before})
    return cur.rowcount


async def declare(conn: psycopg.AsyncConnection[Any], declared: Schedule) -> None:
    """Record the declaration in pgmq_worker.schedules (a later start replaces it)."""
    fields = declared.describe()
    await conn.execute(DECLARE, {**fields, "payload": storable.jsonb(fields["payload"])})
