"""Every runtime statement against pgmq, each behind one small typed function.

Most calls go through pgmq's own SQL functions, restricted to those pgmq 1.4 already has (Supabase
runs 1.4.4/1.5.1). The lease-guarded statements (extend, ack, retry, dead-letter, release) touch
the queue table directly, on the columns every pgmq version has (msg_id, read_ct, vt): pgmq's
delete/archive/set_vt match the message id alone, and a worker whose lease expired must not
settle the delivery another worker now holds. `read_ct` is the delivery's fencing token: every
read bumps it, so (msg_id, read_ct) names one delivery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from queues.names import dlq_name, table_name, validate_queue_name

QUEUE_EXISTS = "SELECT 1 FROM pgmq.meta WHERE queue_name = %s"
CREATE_QUEUE = "SELECT pgmq.create(%s)"
LIST_QUEUES = "SELECT queue_name FROM pgmq.meta ORDER BY queue_name"
SEND = "SELECT * FROM pgmq.send(%s, %s, %s::integer)"
SEND_BATCH = "SELECT * FROM pgmq.send_batch(%s, %s::jsonb[], %s::integer)"
READ = "SELECT msg_id, read_ct, enqueued_at, vt, message FROM pgmq.read(%s, %s::integer, %s::integer)"
METRICS = "SELECT queue_length, queue_visible_length, oldest_msg_age_sec FROM pgmq.metrics(%s)"
INSERT_TRIGGER = "pgmq_worker_notify_insert"
HAS_INSERT_TRIGGER = (
    "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s) AND NOT tgisinternal"
)
CREATE_INSERT_TRIGGER = sql.SQL(
    "CREATE TRIGGER {trigger} AFTER INSERT ON pgmq.{q} "
    "FOR EACH STATEMENT EXECUTE FUNCTION pgmq_worker.notify_insert()"
)

EXTEND = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() + make_interval(secs => %s) "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)
ACK_DELETE = sql.SQL("DELETE FROM pgmq.{q} WHERE msg_id = %s AND read_ct = %s RETURNING msg_id")
ACK_ARCHIVE = sql.SQL(
    "WITH held AS (SELECT msg_id FROM pgmq.{q} WHERE msg_id = %s AND read_ct = %s FOR UPDATE) "
    "SELECT pgmq.archive(%s, held.msg_id) FROM held"
)
RETRY = sql.SQL(
    "UPDATE pgmq.{q} SET vt = clock_timestamp() + make_interval(secs => %s) "
    "WHERE msg_id = %s AND read_ct = %s RETURNING msg_id"
)
DEAD_LETTER = sql.SQL(
    "WITH gone AS (DELETE FROM pgmq.{q} WHERE msg_id = %s AND read_ct = %s RETURNING msg_id) "
    "SELECT pgmq.send(%s, %s, 0) FROM gone"
)
# Shutdown: make what we hold visible again now, not after its timeout. The delivery still counts
# as an attempt (read_ct is never lowered: it is the fencing token of every later delivery).
RELEASE = sql.SQL(
    "UPDATE pgmq.{q} AS m SET vt = clock_timestamp() "
    "FROM unnest(%s::bigint[], %s::integer[]) AS held(msg_id, read_ct) "
    "WHERE m.msg_id = held.msg_id AND m.read_ct = held.read_ct RETURNING m.msg_id"
)


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a pgmq message: (msg_id, read_ct) identifies it."""

    queue: str
    msg_id: int
    read_ct: int
    enqueued_at: datetime
    vt: datetime
    body: Any


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """A queue's depth, in-flight count and oldest age, with its dead-letter depth."""

    queue: str
    depth: int
    visible: int
    in_flight: int
    oldest_age_s: int | None
    dead: int


def _json(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


# -- queues ---------------------------------------------------------------------------------


def ensure_queue(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Create the queue and its dead-letter queue when missing; True when anything was created."""
    created = False
    for name in (validate_queue_name(queue), dlq_name(queue)):
        if conn.execute(QUEUE_EXISTS, (name,)).fetchone() is None:
            conn.execute(CREATE_QUEUE, (name,))
            created = True
    return created


def queue_exists(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Whether pgmq has this queue."""
    return conn.execute(QUEUE_EXISTS, (queue,)).fetchone() is not None


def list_queues(conn: psycopg.Connection[Any]) -> list[str]:
    """Every pgmq queue name, dead-letter queues included."""
    return [str(r[0]) for r in conn.execute(LIST_QUEUES).fetchall()]


def ensure_insert_trigger(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Make inserts into the queue notify `pgmq.q_<queue>.INSERT` once per statement.

    Returns False when we may not add the trigger (not the table's owner): the worker then polls.
    The trigger is created only when missing: CREATE TRIGGER locks the table, and a fleet of
    workers starting at once must not queue up behind each other.
    """
    relation = "pgmq." + table_name(queue)
    if conn.execute(HAS_INSERT_TRIGGER, (INSERT_TRIGGER, relation)).fetchone() is not None:
        return True
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (relation,))
            if conn.execute(HAS_INSERT_TRIGGER, (INSERT_TRIGGER, relation)).fetchone() is None:
                conn.execute(
                    CREATE_INSERT_TRIGGER.format(trigger=sql.Identifier(INSERT_TRIGGER), q=_q(queue))
                )
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def metrics(conn: psycopg.Connection[Any], queue: str) -> QueueMetrics:
    """Depth, visible, in-flight and oldest age of a queue, and its dead-letter depth."""
    row = conn.execute(METRICS, (queue,)).fetchone()
    assert row is not None  # noqa: S101  pgmq.metrics returns exactly one row
    depth, visible, oldest = int(row[0]), int(row[1]), row[2]
    dead = 0
    if queue_exists(conn, dlq_name(queue)):
        dead_row = conn.execute(METRICS, (dlq_name(queue),)).fetchone()
        dead = int(dead_row[0]) if dead_row else 0
    return QueueMetrics(queue, depth, visible, depth - visible, oldest, dead)


# -- sending ----------------------------------------------------------------------------------


def send(conn: psycopg.Connection[Any], queue: str, body: Any, delay_s: int = 0) -> int:
    """pgmq.send; returns the message id."""
    row = conn.execute(SEND, (queue, _json(body), delay_s)).fetchone()
    assert row is not None  # noqa: S101  pgmq.send returns the new id
    return int(row[0])


async def asend(conn: psycopg.AsyncConnection[Any], queue: str, body: Any, delay_s: int = 0) -> int:
    """pgmq.send on an async connection; returns the message id."""
    cur = await conn.execute(SEND, (queue, _json(body), delay_s))
    row = await cur.fetchone()
    assert row is not None  # noqa: S101
    return int(row[0])


def send_batch(
    conn: psycopg.Connection[Any], queue: str, bodies: Sequence[Any], delay_s: int = 0
) -> list[int]:
    """pgmq.send_batch; returns the message ids in order."""
    rows = conn.execute(SEND_BATCH, (queue, [_json(b) for b in bodies], delay_s)).fetchall()
    return [int(r[0]) for r in rows]


async def asend_batch(
    conn: psycopg.AsyncConnection[Any], queue: str, bodies: Sequence[Any], delay_s: int = 0
) -> list[int]:
    """pgmq.send_batch on an async connection; returns the message ids in order."""
    cur = await conn.execute(SEND_BATCH, (queue, [_json(b) for b in bodies], delay_s))
    return [int(r[0]) for r in await cur.fetchall()]


# -- the worker's side: read, lease, settle -----------------------------------------------------


async def read(conn: psycopg.AsyncConnection[Any], queue: str, vt_s: int, qty: int) -> list[Message]:
    """pgmq.read: up to qty visible messages, each invisible for vt_s seconds and read_ct + 1."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(READ, (queue, vt_s, qty))
        rows = await cur.fetchall()
    return [Message(queue, r["msg_id"], r["read_ct"], r["enqueued_at"], r["vt"], r["message"]) for r in rows]


async def extend(
    conn: psycopg.AsyncConnection[Any], queue: str, held: Sequence[tuple[int, int]], vt_s: float
) -> set[int]:
    """Push the visibility of deliveries we still hold vt_s seconds ahead; returns those renewed."""
    ids, cts = _split(held)
    cur = await conn.execute(EXTEND.format(q=_q(queue)), (vt_s, ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


async def ack(conn: psycopg.AsyncConnection[Any], message: Message, *, archive: bool) -> bool:
    """Delete (or archive) the delivery if it is still ours; False when the lease was lost."""
    if archive:
        statement = ACK_ARCHIVE.format(q=_q(message.queue))
        params: tuple[Any, ...] = (message.msg_id, message.read_ct, message.queue)
    else:
        statement = ACK_DELETE.format(q=_q(message.queue))
        params = (message.msg_id, message.read_ct)
    cur = await conn.execute(statement, params)
    return await cur.fetchone() is not None


async def retry_later(conn: psycopg.AsyncConnection[Any], message: Message, delay_s: float) -> bool:
    """Make the delivery visible again after delay_s, if still ours."""
    cur = await conn.execute(RETRY.format(q=_q(message.queue)), (delay_s, message.msg_id, message.read_ct))
    return await cur.fetchone() is not None


async def dead_letter(
    conn: psycopg.AsyncConnection[Any], message: Message, record: dict[str, Any]
) -> int | None:
    """Move the delivery to `<queue>_dlq` with its record, atomically; None when not ours."""
    cur = await conn.execute(
        DEAD_LETTER.format(q=_q(message.queue)),
        (message.msg_id, message.read_ct, dlq_name(message.queue), _json(record)),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def release(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    held: Sequence[tuple[int, int]],
) -> set[int]:
    """Make held deliveries visible now (shutdown), if still ours; returns those released."""
    ids, cts = _split(held)
    cur = await conn.execute(RELEASE.format(q=_q(queue)), (ids, cts))
    return {int(r[0]) for r in await cur.fetchall()}


def _split(held: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    return [h[0] for h in held], [h[1] for h in held]


HAS_MESSAGES = sql.SQL("SELECT EXISTS (SELECT 1 FROM pgmq.{q})")


async def has_messages(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    """Whether the queue holds any message, visible or not (burst mode's 'empty')."""
    cur = await conn.execute(HAS_MESSAGES.format(q=_q(queue)))
    row = await cur.fetchone()
    return bool(row and row[0])


# -- dead letters -------------------------------------------------------------------------------

PEEK = sql.SQL("SELECT msg_id, enqueued_at, message FROM pgmq.{q} ORDER BY msg_id LIMIT %s")
TAKE = sql.SQL(
    "DELETE FROM pgmq.{q} WHERE msg_id = ANY(%s) AND vt <= clock_timestamp() RETURNING msg_id, message"
)
TAKE_ALL = sql.SQL("DELETE FROM pgmq.{q} WHERE vt <= clock_timestamp() RETURNING msg_id, message")


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message parked in a dead-letter queue."""

    msg_id: int
    dead_lettered_at: datetime
    record: dict[str, Any]


def dead_letters(conn: psycopg.Connection[Any], queue: str, limit: int = 50) -> list[DeadLetterEntry]:
    """The oldest entries of `<queue>_dlq`, without taking them."""
    rows = conn.execute(PEEK.format(q=_q(dlq_name(queue))), (limit,)).fetchall()
    return [DeadLetterEntry(int(r[0]), r[1], r[2] if isinstance(r[2], dict) else {"raw": r[2]}) for r in rows]


def replay(conn: psycopg.Connection[Any], queue: str, msg_ids: Sequence[int] | None) -> list[int]:
    """Send dead letters' original payloads back to `queue` and remove them, in one transaction.

    Returns the new message ids. `msg_ids=None` replays the whole dead-letter queue.
    """
    dlq = _q(dlq_name(queue))
    with conn.transaction():
        if msg_ids is None:
            taken = conn.execute(TAKE_ALL.format(q=dlq)).fetchall()
        else:
            taken = conn.execute(TAKE.format(q=dlq), (list(msg_ids),)).fetchall()
        bodies = [r[1]["payload"] if isinstance(r[1], dict) and "payload" in r[1] else r[1] for r in taken]
        return send_batch(conn, queue, bodies) if bodies else []
