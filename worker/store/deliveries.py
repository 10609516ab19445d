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

from db import storable
from queues.ids import uuid7_bytes
from queues.names import dlq_name, table_name
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
# Read, and in the same statement mark each message's job row running (creating it for messages
# that other clients sent with plain pgmq.send, which have none yet): `started_at` keeps the first
# attempt's start, `attempt_started_at` this one's (`pgmq-worker stats` times the last attempt).
READ = """
WITH taken AS ({take}), m AS (
    SELECT msg_id, read_ct, enqueued_at, vt, message, row_number() OVER () AS n FROM taken
), job AS (
    INSERT INTO pgmq_worker.jobs AS j (
        id, queue, msg_id, status, attempts, created_at, started_at, attempt_started_at
    )
    SELECT encode(substring(%(ids)s::bytea FROM (m.n::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid,
        %(queue)s, m.msg_id, 'running', m.read_ct, m.enqueued_at, now(), now() FROM m
    ON CONFLICT (queue, msg_id) DO UPDATE
        SET status = 'running', attempts = EXCLUDED.attempts,
            started_at = coalesce(j.started_at, EXCLUDED.started_at),
            attempt_started_at = EXCLUDED.attempt_started_at, updated_at = now()
    RETURNING j.msg_id, j.id, j.deferrals, j.webhook_url, j.timeout_s, j.max_attempts,
        j.cancel_requested_at IS NOT NULL AS cancel_requested
)
SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, job.id AS job_id, job.deferrals,
    job.webhook_url, job.timeout_s, job.max_attempts, job.cancel_requested
FROM m JOIN job USING (msg_id) ORDER BY m.msg_id
"""
# The same for a queue whose handler runs without job rows (`@handler(..., job_rows=False)`).
READ_PLAIN = (
    "WITH taken AS ({take}) SELECT msg_id, read_ct, enqueued_at, vt, message FROM taken ORDER BY msg_id"
)
EXTEND = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() + make_interval(secs => %s) "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)
# The lease-guarded settles. Each returns the msg_id it settled (nothing when the delivery is no
# longer ours) and updates the job row in the same statement (see SETTLE).
ACK_DELETE = sql.SQL(
    "DELETE FROM pgmq.{q} WHERE msg_id = %(msg_id)s AND read_ct = %(read_ct)s RETURNING msg_id"
)
# Dead-lettering deletes the same way and keeps the message for the record (DEAD_LETTER_SEND).
DEAD_LETTER_DELETE = sql.SQL(
    "DELETE FROM pgmq.{q} WHERE msg_id = %(msg_id)s AND read_ct = %(read_ct)s RETURNING msg_id, message"
)
# Archive only the guarded row, once it is locked. A MATERIALIZED CTE, not a FOR UPDATE subquery:
# the planner pushed the archive() call into the subquery's scan, below the lock, so the row was
# archived before it was locked, the lock then found it gone, and the ack returned nothing (the job
# stayed `running` and the delivery was logged as a lost lease).
ACK_ARCHIVE = sql.SQL(
    "WITH h AS MATERIALIZED (SELECT msg_id FROM pgmq.{q} WHERE msg_id = %(msg_id)s"
    " AND read_ct = %(read_ct)s FOR UPDATE) SELECT h.msg_id FROM h WHERE pgmq.archive(%(queue)s, h.msg_id)"
)
RETRY = sql.SQL(
    "UPDATE pgmq.{q} SET vt = clock_timestamp() + make_interval(secs => %(delay)s) "
    "WHERE msg_id = %(msg_id)s AND read_ct = %(read_ct)s RETURNING msg_id"
)
SETTLE = sql.SQL(
    "WITH settled AS ({guarded}), job AS ("
    " UPDATE pgmq_worker.jobs AS j SET status = %(status)s,"
    " result = CASE WHEN %(status)s = 'succeeded' THEN %(result)s ELSE j.result END,"
    " error = %(error)s, deferrals = j.deferrals + CASE WHEN %(deferral)s THEN 1 ELSE 0 END,"
    " progress = CASE WHEN %(status)s = 'succeeded' THEN 100 ELSE j.progress END,"
    " finished_at = CASE WHEN %(status)s IN ('succeeded', 'dead', 'cancelled') THEN now() END,"
    " updated_at = now()"
    # By key, not by a join to `settled`: a generic plan for the join scanned the whole table.
    " WHERE j.queue = %(queue)s AND j.msg_id = %(msg_id)s AND EXISTS (SELECT FROM settled))"
    " {then}SELECT msg_id FROM settled{also}"
)
# Many successful deliveries of one queue at once: delete those still ours, mark their jobs
# succeeded with each one's result, in one statement (the worker's hot path).
ACK_MANY = sql.SQL(
    "WITH held AS ("
    # The results come as one JSON array (one value to encode, not one per message).
    " SELECT h.msg_id, h.read_ct, %(results)s::jsonb -> (h.i - 1)::integer AS result"
    " FROM unnest(%(ids)s::bigint[], %(cts)s::integer[]) WITH ORDINALITY AS h(msg_id, read_ct, i)),"
    # `= ANY(ids)` keeps the plan on the primary key whatever the queue table's statistics say.
    " settled AS (DELETE FROM pgmq.{q} AS m USING held WHERE m.msg_id = ANY(%(ids)s::bigint[])"
    " AND m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id),"
    " job AS (UPDATE pgmq_worker.jobs AS j SET status = 'succeeded', result = held.result, error = NULL,"
    " progress = 100, finished_at = now(), updated_at = now()"
    " FROM settled JOIN held USING (msg_id) WHERE j.queue = %(queue)s AND j.msg_id = settled.msg_id)"
    " SELECT msg_id FROM settled"
)
ACK_MANY_PLAIN = sql.SQL(
    "DELETE FROM pgmq.{q} AS m USING unnest(%(ids)s::bigint[], %(cts)s::integer[]) AS held(msg_id, read_ct)"
    " WHERE m.msg_id = ANY(%(ids)s::bigint[]) AND m.msg_id = held.msg_id AND m.read_ct = held.read_ct"
    " RETURNING m.msg_id"
)
# A settle without job rows: the guarded statement alone (and the dead-letter send).
SETTLE_PLAIN = sql.SQL("WITH settled AS ({guarded}) {then}SELECT msg_id FROM settled{also}")
# Dead-lettering deletes like an ack and sends the record to `<queue>_dlq` in the same statement.
# The payload goes into the record as the queue stored it, never decoded and encoded again: a
# message another client sent may hold what Python cannot write back (1e400, deep nesting), and
# the dead letter must be written whatever it holds.
DEAD_LETTER_SEND = sql.SQL(
    ", sent AS (SELECT s.id FROM settled, LATERAL pgmq.send(%(dlq)s,"
    " %(record)s || jsonb_build_object('payload', settled.message), 0) AS s(id)) "
)
# Shutdown: make what we hold visible again now, not after its timeout. The delivery still counts
# as an attempt (read_ct is never lowered: it is the fencing token of every later delivery).
RELEASE = sql.SQL(
    "WITH released AS (UPDATE pgmq.{q} AS m SET vt = clock_timestamp() "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id), "
    "job AS (UPDATE pgmq_worker.jobs AS j SET status = 'queued', updated_at = now() "
    "FROM released WHERE j.queue = %s AND j.msg_id = released.msg_id) "
    "SELECT msg_id FROM released"
)
RELEASE_PLAIN = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


def _json(value: Any) -> Any:
    """A value the worker made (a result checked when its handler returned, an error, a record)."""
    return storable.jsonb(value)


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
    # touches pgmq_worker.jobs. With job rows every delivery has one (the read creates it).
    job_id: UUID | None = None
    deferrals: int = 0  # deliveries that ended in a deferral (RateLimited): not attempts
    webhook_url: str | None = None  # where the job's status changes are POSTed
    timeout_s: float | None = None  # this job's own timeout (a fan-out child's), else the handler's
    max_attempts: int | None = None  # this job's own attempts (a fan-out child's), else the handler's
    # Someone cancelled the job while an earlier delivery ran (its lease was lost, its worker
    # crashed, or its attempt ended before the worker noticed): this delivery must not run it.
    cancel_requested: bool = False

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
    """What pgmq.read does: up to qty messages, invisible for vt_s, read_ct + 1; job rows `running`.

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
        ids = uuid7_bytes(qty)  # for the job rows it creates (time-ordered, see queues.ids)
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
    take = sql.SQL(LEASE).format(q=_q(queue), stamp=sql.SQL(STAMP_LAST_READ if stamp else ""))
    return sql.SQL(READ if job_rows else READ_PLAIN).format(take=take).as_string()


async def extend(
    conn: psycopg.AsyncConnection[Any], queue: str, held: Sequence[tuple[int, int]], vt_s: float
) -> set[int]:
    """Push the visibility of deliveries we still hold vt_s seconds ahead; returns those renewed."""
    ids, cts = _split(held)
    cur = await conn.execute(EXTEND.format(q=_q(queue)), (vt_s, ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


async def ack(conn: psycopg.AsyncConnection[Any], message: Message, result: Any, *, archive: bool) -> bool:
    """Delete (or archive) the delivery if still ours, job `succeeded` with its result."""
    guarded = ACK_ARCHIVE if archive else ACK_DELETE
    return await _settle(conn, guarded, message, "succeeded", result=result)


@functools.lru_cache(maxsize=512)
def _ack_many_statement(queue: str, job_rows: bool) -> str:
    # Rendered once per queue: a Composed is rendered again on every execute, which cost as much
    # as the rest of the batch's client-side work.
    return (ACK_MANY if job_rows else ACK_MANY_PLAIN).format(q=_q(queue)).as_string()


async def ack_many(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    done: Sequence[tuple[int, int, Any]],
    *,
    job_rows: bool = True,
) -> set[int]:
    """Delete the deliveries (msg_id, read_ct, result) still ours, jobs `succeeded`; returns those acked.

    job_rows=False: the delete alone (the results go nowhere).
    """
    params: dict[str, Any] = {"queue": queue, "ids": [d[0] for d in done], "cts": [d[1] for d in done]}
    if job_rows:
        params["results"] = _json([d[2] for d in done])
    cur = await conn.execute(_ack_many_statement(queue, job_rows), params)
    return {int(r[0]) for r in await cur.fetchall()}


async def hide(
    conn: psycopg.AsyncConnection[Any],
    message: Message,
    delay_s: float,
    status: str,
    *,
    error: dict[str, Any] | None = None,
    deferral: bool = False,
) -> bool:
    """Hide the delivery for delay_s, if still ours, its job now `status` (with the error, if any).

    A failed attempt (`failed`), a rate-limited one (`queued`, a deferral: not counted as an
    attempt), a parent waiting for its children (`running`, a deferral: waking up is no attempt).
    """
    return await _settle(conn, RETRY, message, status, error=error, delay=delay_s, deferral=deferral)


async def cancelled(conn: psycopg.AsyncConnection[Any], message: Message, error: dict[str, Any]) -> bool:
    """Delete the delivery, if still ours; job `cancelled` (never retried), with why in `error`."""
    return await _settle(conn, ACK_DELETE, message, "cancelled", error=error)


async def dead_letter(conn: psycopg.AsyncConnection[Any], message: Message, record: dict[str, Any]) -> bool:
    """Move the delivery to `<queue>_dlq` with its record, if still ours; job `dead`.

    The record gets the message's stored payload as `payload`, copied in the statement.
    """
    return await _settle(
        conn,
        DEAD_LETTER_DELETE,
        message,
        "dead",
        error=record["error"],
        dlq=dlq_name(message.queue),
        record=_json(record),
    )


async def _settle(
    conn: psycopg.AsyncConnection[Any],
    guarded: sql.SQL,
    message: Message,
    status: str,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    deferral: bool = False,
    **params: Any,
) -> bool:
    dead = status == "dead"
    statement = (SETTLE if message.job_id is not None else SETTLE_PLAIN).format(
        guarded=guarded.format(q=_q(message.queue)),
        then=DEAD_LETTER_SEND if dead else sql.SQL(""),
        also=sql.SQL(", sent") if dead else sql.SQL(""),
    )
    cur = await conn.execute(
        statement,
        {
            "queue": message.queue,
            "msg_id": message.msg_id,
            "read_ct": message.read_ct,
            "status": status,
            "result": _json(result),
            "error": None if error is None else _json(error),
            "deferral": deferral,
            **params,
        },
    )
    return await cur.fetchone() is not None


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
        cur = await conn.execute(RELEASE.format(q=_q(queue)), (ids, cts, queue))
    else:
        cur = await conn.execute(RELEASE_PLAIN.format(q=_q(queue)), (ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


def _split(held: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    return [h[0] for h in held], [h[1] for h in held]


HAS_MESSAGES = sql.SQL("SELECT EXISTS (SELECT 1 FROM pgmq.{q})")


async def has_messages(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    """Whether the queue holds any message, visible or not (burst mode's 'empty')."""
    cur = await conn.execute(HAS_MESSAGES.format(q=_q(queue)))
    row = await cur.fetchone()
    return bool(row and row[0])
