"""Deliveries: the worker's statements on a queue's messages, from the read to the settle.

The hot statements touch the queue table directly, on the columns every pgmq version has
(msg_id, read_ct, enqueued_at, vt, message): the read is pgmq's own UPDATE, prepared once
instead of planned on every call inside plpgsql, and the lease-guarded ones (extend, ack, hide,
dead-letter, release) must be ours: pgmq's delete/archive/set_vt match the message id alone, and
a worker whose lease expired must not settle the delivery another worker now holds. `read_ct` is
the delivery's fencing token: every read bumps it, so (msg_id, read_ct) names one delivery.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from queues.ids import uuid7_bytes
from queues.names import table_name
from worker.store.read_marks import ReadMarks

# Read: what pgmq.read does, as our own statement on the queue's table. pgmq.read builds this
# UPDATE with format() and plans it again on every call (plpgsql EXECUTE); ours is prepared once
# per connection. An idle worker's pickup is one cold read, and that planning was a quarter of it
# (0.3-0.4 ms of 1.1-1.5, embedded PostgreSQL 18). pgmq 1.10+ also stamps last_read_at, where the
# table has it: `{stamp}`. `low`: where the index walk starts (worker/store/read_marks.py).
LEASE = """
    WITH c AS (
        SELECT msg_id FROM pgmq.{q} WHERE vt <= clock_timestamp() AND msg_id >= %(low)s::bigint
        ORDER BY msg_id LIMIT %(qty)s::integer FOR UPDATE SKIP LOCKED
    )
    UPDATE pgmq.{q} AS t
    SET {stamp}vt = clock_timestamp() + make_interval(secs => %(vt)s::integer), read_ct = t.read_ct + 1
    FROM c WHERE t.msg_id = c.msg_id
    RETURNING t.msg_id, t.read_ct, t.enqueued_at, t.vt, t.message
"""
STAMP_LAST_READ = "last_read_at = clock_timestamp(), "
HAS_LAST_READ_AT = (
    "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = r AND attname = 'last_read_at'"
    " AND NOT attisdropped) FROM to_regclass(%s) AS r WHERE r IS NOT NULL"
)
# Read, and in the same statement look up each message's job row by key. Nothing is written to
# it: the job row says `running` once the delivery has run a moment (MARK_RUNNING,
# worker/running_marks.py) or reports anything, and the settle writes the outcome with the
# attempt's count and times. A job that ends within that moment writes one version fewer (one,
# not two, for a message sent with plain pgmq.send, which has no row until then: its id is the
# one the read hands out, from `ids`). `read_at` (the read's now()) is the attempt's start.
# The lookup: when the ids read lie close together (the usual drain: a run of consecutive ids),
# one range scan of (queue, msg_id), the rows of other messages in the range joined away; when
# they are spread (a retried message among new ones), one descent per id (`= ANY`: a generic plan
# for a join scanned the whole table). Each branch's condition is a one-time filter: the other
# branch is not run. The range took 3 µs less of the server's CPU a message (bench/statement_floor.py).
JOB_COLUMNS = """j.msg_id, j.id, j.deferrals, j.webhook_url, j.timeout_s, j.max_attempts,
        j.cancel_requested_at IS NOT NULL AS cancel_requested"""
READ = (
    """
WITH taken AS ({take}), m AS (
    SELECT msg_id, read_ct, enqueued_at, vt, message, row_number() OVER () AS n FROM taken
), job AS (
    SELECT """
    + JOB_COLUMNS
    + """ FROM pgmq_worker.jobs AS j
    WHERE (SELECT max(msg_id) - min(msg_id) < 2 * count(*) FROM m)
        AND j.queue = %(queue)s
        AND j.msg_id >= (SELECT min(msg_id) FROM m) AND j.msg_id <= (SELECT max(msg_id) FROM m)
    UNION ALL
    SELECT """
    + JOB_COLUMNS
    + """ FROM pgmq_worker.jobs AS j
    WHERE (SELECT max(msg_id) - min(msg_id) >= 2 * count(*) FROM m)
        AND j.queue = %(queue)s AND j.msg_id = ANY(ARRAY(SELECT msg_id FROM m))
)
SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message,
    coalesce(job.id, encode(substring(%(ids)s::bytea FROM (m.n::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid),
    coalesce(job.deferrals, 0), job.webhook_url, job.timeout_s, job.max_attempts,
    coalesce(job.cancel_requested, false), now()
FROM m LEFT JOIN job USING (msg_id) ORDER BY m.msg_id
"""
)
# The job row of deliveries still ours says `running`, with this attempt's count and start
# (created for a message that has none). Fenced twice: the message must still be this delivery
# (a settled one is gone, a re-read one has a higher read_ct), and the row must not have been
# written for this attempt or a later one (`attempts` is the read_ct of the last attempt written).
MARK_RUNNING = sql.SQL(
    "WITH held AS (SELECT h.*, m.enqueued_at FROM unnest(%(job_ids)s::uuid[], %(ids)s::bigint[],"
    " %(cts)s::integer[], %(started)s::timestamptz[]) AS h(id, msg_id, read_ct, started_at)"
    " JOIN pgmq.{q} AS m ON m.msg_id = h.msg_id AND m.read_ct = h.read_ct)"
    " INSERT INTO pgmq_worker.jobs AS j (id, queue, msg_id, status, attempts, created_at, started_at,"
    " attempt_started_at) SELECT held.id, %(queue)s, held.msg_id, 'running', held.read_ct, held.enqueued_at,"
    " held.started_at, held.started_at FROM held"
    " ON CONFLICT (queue, msg_id) DO UPDATE SET status = 'running', attempts = EXCLUDED.attempts,"
    " started_at = coalesce(j.started_at, EXCLUDED.started_at),"
    " attempt_started_at = EXCLUDED.attempt_started_at, updated_at = now()"
    " WHERE j.attempts < EXCLUDED.attempts"
    " RETURNING j.msg_id"
)
# The same for a queue whose handler runs without job rows (`@handler(..., job_rows=False)`).
READ_PLAIN = (
    "WITH taken AS ({take}) SELECT msg_id, read_ct, enqueued_at, vt, message FROM taken ORDER BY msg_id"
)
EXTEND = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() + make_interval(secs => %s) "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)
# Shutdown: make what we hold visible again now, not after its timeout. The delivery still counts
# as an attempt (read_ct is never lowered: it is the fencing token of every later delivery).
RELEASE = sql.SQL(
    "WITH released AS (UPDATE pgmq.{q} AS m SET vt = clock_timestamp() "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id), "
    "job AS (UPDATE pgmq_worker.jobs AS j SET status = 'queued', updated_at = now() "
    "FROM released WHERE j.queue = %s AND j.msg_id = released.msg_id AND j.status <> 'queued') "
    "SELECT msg_id FROM released"
)
RELEASE_PLAIN = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)


def table_ident(queue: str) -> sql.Identifier:
    """The queue table's name, quoted, for the statements here and in worker/store/settles.py."""
    return sql.Identifier(table_name(queue))


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a pgmq message: (msg_id, read_ct) identifies it."""

    queue: str
    msg_id: int
    read_ct: int
    enqueued_at: datetime
    vt: datetime
    body: Any
    # None when the queue runs without job rows (`@handler(..., job_rows=False)`): then no settle
    # touches pgmq_worker.jobs. With job rows every delivery has one: the row's id, or for a
    # message that has no row yet the id its row will be created with (see READ).
    job_id: UUID | None = None
    deferrals: int = 0  # deliveries that ended in a deferral (RateLimited): not attempts
    webhook_url: str | None = None  # where the job's status changes are POSTed
    timeout_s: float | None = None  # this job's own timeout (a fan-out child's), else the handler's
    max_attempts: int | None = None  # this job's own attempts (a fan-out child's), else the handler's
    # Someone cancelled the job while an earlier delivery ran (its lease was lost, its worker
    # crashed, or its attempt ended before the worker noticed): this delivery must not run it.
    cancel_requested: bool = False
    read_at: datetime | None = None  # the read's now(): this attempt's start (None: not read here)

    @property
    def attempt(self) -> int:
        """This delivery's attempt number: deliveries so far, less the deferred ones."""
        return self.read_ct - self.deferrals


async def read(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    vt_s: int,
    qty: int,
    *,
    job_rows: bool = True,
    stamps: dict[str, bool] | None = None,
    marks: ReadMarks | None = None,
) -> list[Message]:
    """What pgmq.read does: up to qty messages, invisible for vt_s, read_ct + 1, each with its job.

    job_rows=False: the read alone; the messages come without a job (job_id None). `stamps`: the
    caller's memory of which queue tables have last_read_at (pgmq 1.10+), for one database (the
    worker's); without it the read asks every time. `marks`: where the read starts (the worker's
    ReadMarks); without them, from the lowest id.
    """
    statement = await _read_statement(conn, queue, job_rows=job_rows, stamps=stamps)
    low = 0 if marks is None else marks.low(queue)
    if not job_rows:
        cur = await conn.execute(statement, {"vt": vt_s, "qty": qty, "low": low})
        found = [Message(queue, r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]
    else:
        ids = uuid7_bytes(qty)  # for messages without a row: their rows' ids (time-ordered, queues.ids)
        cur = await conn.execute(statement, {"queue": queue, "vt": vt_s, "qty": qty, "ids": ids, "low": low})
        # READ's columns are Message's fields in order (tuples: no dict per row on the hot path).
        found = [Message(queue, *r) for r in await cur.fetchall()]
    if marks is not None:
        marks.saw(queue, [m.msg_id for m in found])
    return found


async def _read_statement(
    conn: psycopg.AsyncConnection[Any], queue: str, *, job_rows: bool, stamps: dict[str, bool] | None
) -> str:
    """READ (or READ_PLAIN) for the queue's table; whether to stamp last_read_at asked once per `stamps`."""
    stamp = None if stamps is None else stamps.get(queue)
    if stamp is None:
        cur = await conn.execute(HAS_LAST_READ_AT, ("pgmq." + table_name(queue),))
        row = await cur.fetchone()
        stamp = bool(row[0]) if row is not None else False
        if row is not None and stamps is not None:  # no table: the read fails as pgmq.read would, ask again
            stamps[queue] = stamp
    return _render_read(queue, job_rows=job_rows, stamp=stamp)


@functools.lru_cache(maxsize=1024)
def _render_read(queue: str, *, job_rows: bool, stamp: bool) -> str:
    take = sql.SQL(LEASE).format(q=table_ident(queue), stamp=sql.SQL(STAMP_LAST_READ if stamp else ""))
    return sql.SQL(READ if job_rows else READ_PLAIN).format(take=take).as_string()


async def extend(
    conn: psycopg.AsyncConnection[Any], queue: str, held: Sequence[tuple[int, int]], vt_s: float
) -> set[int]:
    """Push the visibility of deliveries we still hold vt_s seconds ahead; returns those renewed."""
    ids, cts = _split(held)
    cur = await conn.execute(EXTEND.format(q=table_ident(queue)), (vt_s, ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


@functools.lru_cache(maxsize=512)
def _mark_running_statement(queue: str) -> str:
    return MARK_RUNNING.format(q=table_ident(queue)).as_string()


async def mark_running(conn: psycopg.AsyncConnection[Any], queue: str, held: Sequence[Message]) -> set[int]:
    """Job rows `running` for deliveries of `queue` still ours and not yet written (see MARK_RUNNING).

    Returns the msg_ids whose row it wrote.
    """
    params = {
        "queue": queue,
        "job_ids": [m.job_id for m in held],
        "ids": [m.msg_id for m in held],
        "cts": [m.read_ct for m in held],
        "started": [m.read_at for m in held],
    }
    cur = await conn.execute(_mark_running_statement(queue), params)
    return {int(r[0]) for r in await cur.fetchall()}


async def release(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    held: Sequence[tuple[int, int]],
    *,
    job_rows: bool = True,
) -> set[int]:
    """Make held deliveries visible now (shutdown), if still ours; returns those released."""
    ids, cts = _split(held)
    if job_rows:
        cur = await conn.execute(RELEASE.format(q=table_ident(queue)), (ids, cts, queue))
    else:
        cur = await conn.execute(RELEASE_PLAIN.format(q=table_ident(queue)), (ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


def _split(held: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    return [h[0] for h in held], [h[1] for h in held]


HAS_MESSAGES = sql.SQL("SELECT EXISTS (SELECT 1 FROM pgmq.{q})")


async def has_messages(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    """Whether the queue holds any message, visible or not (burst mode's 'empty')."""
    cur = await conn.execute(HAS_MESSAGES.format(q=table_ident(queue)))
    row = await cur.fetchone()
    return bool(row and row[0])
