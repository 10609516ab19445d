"""Enqueue's statements: a message and its job row together, one at a time or many at once.

queues.enqueue checks what is sent and calls these; the worker (a fan-out child, a schedule's
tick) sends through `asend_job` too. The statements write the queue's table directly (see
SEND_JOB) and work on every pgmq version we support.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from queues.errors import UnknownQueue
from queues.ids import uuid7, uuid7_batch
from queues.names import table_name
from queues.pgmq import aqueue_exists, queue_exists


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


# Enqueue: the message and its job row in one statement, so neither exists without the other.
# The message goes straight into the queue's table, the INSERT pgmq.send runs inside (vt, message;
# the other columns keep their defaults on every pgmq version): pgmq.send builds and plans that
# INSERT in plpgsql on every call, and this statement, prepared once, costs 1.6x less at 8
# producers. A missing table fails at parse time, aborting the caller's transaction, so a queue
# is looked up in pgmq.meta first when the caller has a transaction open (`_alone`).
SEND_JOB = sql.SQL("""
WITH sent AS (
    INSERT INTO pgmq.{q} (vt, message)
    VALUES (clock_timestamp() + make_interval(secs => %(delay)s::integer), %(body)s::jsonb)
    RETURNING msg_id
)
INSERT INTO pgmq_worker.jobs (id, queue, msg_id, status, owner, idempotency_key, webhook_url)
SELECT %(id)s, %(queue)s, sent.msg_id, 'queued', %(owner)s, %(key)s, %(webhook)s FROM sent
RETURNING msg_id
""")
# The bodies travel as one JSON array, split on the server: a jsonb[] parameter costs the client a
# quoting pass over every element (40% of a 1000-message enqueue_batch). They are inserted in
# array order, as pgmq.send_batch inserts its array, so the n-th lowest msg_id is the n-th body.
# The job ids (queues.ids: time-ordered, made by the client) travel as one bytea of 16 bytes each,
# the n-th for the n-th body, so the caller need not parse ids back. Each body's delay and owner
# are the n-th of `delays` and `owners`, or the only one when an array holds one (enqueue_batch:
# one delay and one owner for all; the web process's coalesced requests: each their own).
SEND_JOB_BATCH = sql.SQL("""
WITH sent AS (
    INSERT INTO pgmq.{q} (vt, message)
    SELECT d.now + make_interval(secs => d.delays[least(b.n, cardinality(d.delays))]), b.body
    FROM (SELECT clock_timestamp() AS now, %(delays)s::integer[] AS delays) AS d,
        jsonb_array_elements(%(bodies)s::jsonb) WITH ORDINALITY AS b(body, n)
    ORDER BY b.n
    RETURNING msg_id
), numbered AS (SELECT msg_id, row_number() OVER (ORDER BY msg_id) AS n FROM sent)
INSERT INTO pgmq_worker.jobs (id, queue, msg_id, status, owner)
SELECT encode(substring(%(ids)s::bytea FROM (numbered.n::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid,
    %(queue)s, numbered.msg_id, 'queued', o.owners[least(numbered.n, cardinality(o.owners))]
FROM numbered, (SELECT %(owners)s::uuid[] AS owners) AS o
RETURNING msg_id
""")
ACTIVE_JOB = (
    "SELECT id, msg_id FROM pgmq_worker.jobs WHERE queue = %s AND active_key = %s"  # unfinished (0023)
)


def _alone(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a failed statement would take nothing of the caller's with it.

    True when no transaction is open: on an autocommit connection the statement is its own
    transaction; otherwise it opens one, which we roll back. Then the send is tried as is, and
    a missing table answers UnknownQueue. Inside the caller's transaction the queue is looked up in pgmq.meta
    first (one more round trip), since a missing table would abort that transaction.
    """
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _check_missing(exc: psycopg.errors.UndefinedTable, queue: str, *, alone: bool) -> None:
    """After a send found no table: re-raise unless it is the queue's; UnknownQueue inside a
    transaction of the caller's (the queue was dropped between the lookup and the send)."""
    if table_name(queue) not in str(exc):
        raise exc
    if not alone:
        raise UnknownQueue(
            f"no queue named {queue!r} any more (it was dropped): create it again; the statement "
            "failed, and so has the transaction it ran in"
        ) from exc


def _job_params(
    queue: str, body: str, delay_s: int, *, owner: UUID | None, key: str | None, webhook: str | None
) -> dict[str, Any]:
    """SEND_JOB's parameters, with a new job id."""
    return {
        "id": uuid7(),
        "queue": queue,
        "body": body,
        "delay": delay_s,
        "owner": owner,
        "key": key,
        "webhook": webhook,
    }


@functools.lru_cache(maxsize=512)
def _send_statement(queue: str, *, batch: bool) -> str:
    """SEND_JOB (or SEND_JOB_BATCH) for one queue's table, rendered once."""
    return (SEND_JOB_BATCH if batch else SEND_JOB).format(q=_q(queue)).as_string()


def send_job(
    conn: psycopg.Connection[Any],
    queue: str,
    body: str,
    delay_s: int,
    *,
    owner: UUID | None,
    key: str | None,
    webhook: str | None = None,
) -> tuple[UUID, int] | None:
    """The message and its job row (status queued): (job id, message id); None if no such queue.

    `body` is the message as JSON object text (queues.enqueue.encode): encoded once, checked once.
    Inside the caller's transaction the queue is looked up first (see `_alone`); one dropped
    between that lookup and the send raises UnknownQueue (the transaction has failed).
    """
    alone = _alone(conn)
    if not alone and not queue_exists(conn, queue):
        return None
    params = _job_params(queue, body, delay_s, owner=owner, key=key, webhook=webhook)
    try:
        row = conn.execute(_send_statement(queue, batch=False), params).fetchone()
    except psycopg.errors.UndefinedTable as exc:
        _check_missing(exc, queue, alone=alone)
        if not conn.autocommit:
            conn.rollback()  # the transaction held only our statement
        return None
    assert row is not None  # noqa: S101  one message, one job row
    return params["id"], int(row[0])


async def asend_job(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    body: str,
    delay_s: int,
    *,
    owner: UUID | None,
    key: str | None,
    webhook: str | None = None,
) -> tuple[UUID, int] | None:
    """send_job on an async connection."""
    alone = _alone(conn)
    if not alone and not await aqueue_exists(conn, queue):
        return None
    params = _job_params(queue, body, delay_s, owner=owner, key=key, webhook=webhook)
    rows = await _asend_rows(conn, queue, params, batch=False, alone=alone)
    if rows is None:
        return None
    assert len(rows) == 1  # noqa: S101  one message, one job row
    return params["id"], int(rows[0][0])


async def _asend_rows(
    conn: psycopg.AsyncConnection[Any], queue: str, params: dict[str, Any], *, batch: bool, alone: bool
) -> list[tuple[Any, ...]] | None:
    """SEND_JOB (or SEND_JOB_BATCH)'s rows; None when the queue's table is missing (see send_job)."""
    try:
        cur = await conn.execute(_send_statement(queue, batch=batch), params)
    except psycopg.errors.UndefinedTable as exc:
        _check_missing(exc, queue, alone=alone)
        if not conn.autocommit:
            await conn.rollback()
        return None
    return await cur.fetchall()


def _batch_params(
    queue: str, bodies: str, n: int, delays: Sequence[int], owners: Sequence[UUID | None]
) -> tuple[dict[str, Any], list[UUID]]:
    """SEND_JOB_BATCH's parameters for n bodies, with their new job ids."""
    raw, ids = uuid7_batch(n)
    return {"queue": queue, "bodies": bodies, "ids": raw, "delays": list(delays), "owners": list(owners)}, ids


def _batch_sent(ids: list[UUID], rows: Sequence[tuple[Any, ...]]) -> list[tuple[UUID, int]]:
    """(job id, msg_id) per body: the n-th lowest msg_id is the n-th body's (SEND_JOB_BATCH)."""
    return list(zip(ids, sorted(int(r[0]) for r in rows), strict=True))


def send_job_batch(
    conn: psycopg.Connection[Any], queue: str, bodies: str, n: int, *, delay_s: int, owner: UUID | None
) -> list[tuple[UUID, int]]:
    """The n messages in `bodies` (a JSON array of objects) and a job row for each, in order.

    Returns (job id, msg_id) per body; empty if the queue does not exist (see send_job for one
    dropped since).
    """
    alone = _alone(conn)
    if not alone and not queue_exists(conn, queue):
        return []
    params, ids = _batch_params(queue, bodies, n, [delay_s], [owner])
    try:
        rows = conn.execute(_send_statement(queue, batch=True), params).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        _check_missing(exc, queue, alone=alone)
        if not conn.autocommit:
            conn.rollback()
        return []
    return _batch_sent(ids, rows)


async def asend_job_batch(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    bodies: str,
    n: int,
    *,
    delays: Sequence[int],
    owners: Sequence[UUID | None],
) -> list[tuple[UUID, int]]:
    """send_job_batch on an async connection, each body with its own delay and owner.

    `delays` and `owners` hold one value per body (or one for all); empty if no such queue.
    """
    alone = _alone(conn)
    if not alone and not await aqueue_exists(conn, queue):
        return []
    params, ids = _batch_params(queue, bodies, n, delays, owners)
    rows = await _asend_rows(conn, queue, params, batch=True, alone=alone)
    return [] if rows is None else _batch_sent(ids, rows)


def active_job(conn: psycopg.Connection[Any], queue: str, key: str) -> tuple[UUID, int] | None:
    """The unfinished job enqueued with this idempotency key, if any."""
    row = conn.execute(ACTIVE_JOB, (queue, key)).fetchone()
    return None if row is None else (row[0], int(row[1]))


async def aactive_job(conn: psycopg.AsyncConnection[Any], queue: str, key: str) -> tuple[UUID, int] | None:
    """active_job on an async connection."""
    cur = await conn.execute(ACTIVE_JOB, (queue, key))
    row = await cur.fetchone()
    return None if row is None else (row[0], int(row[1]))
