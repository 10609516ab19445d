"""Settles: the lease-guarded statements that end a delivery, each writing its job row with it.

ack (delete or archive), ack_many (the hot path: a batch of successes in one statement), hide (a
failed attempt's retry, a deferral, a parent waiting for its children), cancelled and
dead_letter. Each is fenced by the delivery's (msg_id, read_ct) (worker/store/deliveries.py) and
writes the job row only when the delivery was still ours, in the same statement, so a job is
never `succeeded` while its message can still be redelivered. The row is created when it has
none yet: the read writes nothing to it (see deliveries.READ).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from db import storable
from queues.names import dlq_name
from worker.store.deliveries import Message, table_ident

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
# The job row as the outcome leaves it, written in the statement that settles the message (and
# only when that found the delivery still ours): created when it has none yet (see READ), else
# updated with this attempt's count and start as MARK_RUNNING would have written them.
JOB_WRITE = (
    " INSERT INTO pgmq_worker.jobs AS j (id, queue, msg_id, status, attempts, deferrals, result, error,"
    " progress, created_at, started_at, attempt_started_at, finished_at)"
    " SELECT {values} FROM {source}"
    " ON CONFLICT (queue, msg_id) DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,"
    " started_at = coalesce(j.started_at, EXCLUDED.started_at),"
    " attempt_started_at = EXCLUDED.attempt_started_at,"
    " {updates}, updated_at = now()"
)
SETTLE = sql.SQL(
    "WITH settled AS ({guarded}), job AS ("
    + JOB_WRITE.format(
        values="%(job_id)s::uuid, %(queue)s::text, settled.msg_id, %(status)s::text, %(read_ct)s::integer,"
        " CASE WHEN %(deferral)s THEN 1 ELSE 0 END,"
        " CASE WHEN %(status)s = 'succeeded' THEN %(result)s::jsonb END, %(error)s::jsonb,"
        " CASE WHEN %(status)s = 'succeeded' THEN 100 ELSE 0 END, %(enqueued_at)s::timestamptz,"
        " %(read_at)s::timestamptz, %(read_at)s::timestamptz,"
        " CASE WHEN %(status)s IN ('succeeded', 'dead', 'cancelled') THEN now() END",
        source="settled",
        updates="result = CASE WHEN EXCLUDED.status = 'succeeded' THEN EXCLUDED.result ELSE j.result END,"
        " error = EXCLUDED.error, deferrals = j.deferrals + EXCLUDED.deferrals,"
        " progress = CASE WHEN EXCLUDED.status = 'succeeded' THEN 100 ELSE j.progress END,"
        " finished_at = EXCLUDED.finished_at",
    )
    + ") {then}SELECT msg_id FROM settled{also}"
)
# Many successful deliveries of one queue at once: delete those still ours, mark their jobs
# succeeded with each one's result, in one statement (the worker's hot path).
ACK_MANY = sql.SQL(
    "WITH held AS ("
    # Per message values as one value each, not one array element each (psycopg dumps arrays
    # element by element in Python, a tenth of the worker's CPU for three more arrays): the
    # results as one JSON array, the job ids as 16 bytes each, the reads' times as epoch text.
    " SELECT h.msg_id, h.read_ct, %(results)s::jsonb -> (h.i - 1)::integer AS result,"
    " encode(substring(%(job_ids)s::bytea FROM (h.i::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid AS job_id,"
    " to_timestamp(h.read_at) AS read_at"
    " FROM unnest(%(ids)s::bigint[], %(cts)s::integer[],"
    " string_to_array(%(read_ats)s::text, ',', '')::float8[])"
    " WITH ORDINALITY AS h(msg_id, read_ct, read_at, i)),"
    # `= ANY(ids)` keeps the plan on the primary key whatever the queue table's statistics say.
    " settled AS (DELETE FROM pgmq.{q} AS m USING held WHERE m.msg_id = ANY(%(ids)s::bigint[])"
    " AND m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id, m.enqueued_at),"
    " job AS ("
    + JOB_WRITE.format(
        values="held.job_id, %(queue)s::text, held.msg_id, 'succeeded', held.read_ct, 0, held.result,"
        " NULL, 100, settled.enqueued_at, held.read_at, held.read_at, now()",
        source="settled JOIN held USING (msg_id)",
        updates="result = EXCLUDED.result, error = NULL, progress = 100, finished_at = now()",
    )
    + ") SELECT msg_id FROM settled"
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


def _json(value: Any) -> Any:
    """A value the worker made (a result checked when its handler returned, an error, a record)."""
    return storable.jsonb(value)


async def ack(conn: psycopg.AsyncConnection[Any], message: Message, result: Any, *, archive: bool) -> bool:
    """Delete (or archive) the delivery if still ours, job `succeeded` with its result."""
    guarded = ACK_ARCHIVE if archive else ACK_DELETE
    return await _settle(conn, guarded, message, "succeeded", result=result)


@functools.lru_cache(maxsize=512)
def _ack_many_statement(queue: str, job_rows: bool) -> str:
    # Rendered once per queue: a Composed is rendered again on every execute, which cost as much
    # as the rest of the batch's client-side work.
    return (ACK_MANY if job_rows else ACK_MANY_PLAIN).format(q=table_ident(queue)).as_string()


async def ack_many(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    done: Sequence[tuple[Message, Any]],
    *,
    job_rows: bool = True,
) -> set[int]:
    """Delete the deliveries (each with its result) still ours, jobs `succeeded`; returns those acked.

    job_rows=False: the delete alone (the results go nowhere).
    """
    params = ack_many_params(queue, done, job_rows=job_rows)
    cur = await conn.execute(_ack_many_statement(queue, job_rows), params)
    return {int(r[0]) for r in await cur.fetchall()}


def ack_many_params(queue: str, done: Sequence[tuple[Message, Any]], *, job_rows: bool) -> dict[str, Any]:
    """ACK_MANY's (or ACK_MANY_PLAIN's) parameters for the deliveries and their results."""
    ids, cts = [m.msg_id for m, _ in done], [m.read_ct for m, _ in done]
    params: dict[str, Any] = {"queue": queue, "ids": ids, "cts": cts}
    if job_rows:
        params["results"] = _json([result for _, result in done])
        params["job_ids"] = b"".join(_job_id(m).bytes for m, _ in done)  # 16 bytes each, in order
        params["read_ats"] = ",".join(
            "" if m.read_at is None else repr(m.read_at.timestamp()) for m, _ in done
        )
    return params


def _job_id(message: Message) -> UUID:
    if message.job_id is None:
        raise ValueError(f"{message.queue}:{message.msg_id} has no job row to write")
    return message.job_id


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
        guarded=guarded.format(q=table_ident(message.queue)),
        then=DEAD_LETTER_SEND if dead else sql.SQL(""),
        also=sql.SQL(", sent") if dead else sql.SQL(""),
    )
    cur = await conn.execute(
        statement,
        {
            "queue": message.queue,
            "msg_id": message.msg_id,
            "read_ct": message.read_ct,
            "job_id": message.job_id,
            "enqueued_at": message.enqueued_at,
            "read_at": message.read_at,
            "status": status,
            "result": _json(result),
            "error": None if error is None else _json(error),
            "deferral": deferral,
            **params,
        },
    )
    return await cur.fetchone() is not None
