"""Statements against pgmq that any process needs: queues, sending, metrics, dead letters.

Queue management goes through pgmq's own SQL functions, restricted to those pgmq 1.4 already has
(Supabase runs 1.4.4/1.5.1). The send is pgmq's own INSERT, prepared once instead of planned on
every call inside plpgsql. What only a worker runs (the read, the lease, the settles, the waiters)
is in worker/store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from db import storable
from db.pgmq_install import PgmqFeatures, detect
from queues import storage
from queues.errors import InvalidPayload
from queues.names import dlq_name, table_name, validate_queue_name

QUEUE_EXISTS = "SELECT 1 FROM pgmq.meta WHERE queue_name = %s"
LIST_QUEUES = "SELECT queue_name FROM pgmq.meta ORDER BY queue_name"
# pgmq.drop_queue leaves the queue's job rows; a queue created again under that name hands out
# message ids from 1, which those rows still hold (jobs is unique on (queue, msg_id)): enqueues
# would fail and the worker's read would take the old rows over. The queue's id sequence is moved
# past them instead, keeping the old jobs' history. Only ever moved forward, under a lock.
STALE_JOB_IDS = (
    "SELECT coalesce((SELECT max(msg_id) FROM pgmq_worker.jobs WHERE queue = %(queue)s), 0)"
    " > coalesce(pg_sequence_last_value(pg_get_serial_sequence(%(table)s, 'msg_id')), 0)"
)
SKIP_STALE_JOB_IDS = (
    "SELECT setval(pg_get_serial_sequence(%(table)s, 'msg_id'), j.top)"
    " FROM (SELECT max(msg_id) AS top FROM pgmq_worker.jobs WHERE queue = %(queue)s) AS j"
    " WHERE j.top > coalesce(pg_sequence_last_value(pg_get_serial_sequence(%(table)s, 'msg_id')), 0)"
)
SEND = "SELECT * FROM pgmq.send(%s, %s, %s::integer)"
SEND_BATCH = "SELECT * FROM pgmq.send_batch(%s, %s::jsonb[], %s::integer)"
SEND_IF_EXISTS = """
SELECT s.msg_id
FROM pgmq.meta AS q, LATERAL pgmq.send(q.queue_name, %(body)s::jsonb, %(delay)s::integer) AS s(msg_id)
WHERE q.queue_name = %(queue)s
"""
METRICS = "SELECT queue_length, queue_visible_length, oldest_msg_age_sec FROM pgmq.metrics(%s)"
# pgmq 1.4's metrics() has no visible count (PgmqFeatures.metrics_visible): counted as 1.5 counts it.
METRICS_COUNTING_VISIBLE = sql.SQL(
    "SELECT m.queue_length, (SELECT count(*) FROM pgmq.{q} WHERE vt <= now()), m.oldest_msg_age_sec"
    " FROM pgmq.metrics(%s) AS m"
)
QUEUE_LENGTH = "SELECT queue_length FROM pgmq.metrics(%s)"
INSERT_TRIGGER = "pgmq_worker_notify_insert"
HAS_INSERT_TRIGGER = (
    "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s) AND NOT tgisinternal"
)
CREATE_INSERT_TRIGGER = sql.SQL(
    "CREATE TRIGGER {trigger} AFTER INSERT ON pgmq.{q} "
    "FOR EACH STATEMENT EXECUTE FUNCTION pgmq_worker.notify_insert()"
)


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """A queue's depth, in-flight count and oldest age, with its dead-letter depth."""

    queue: str
    depth: int
    visible: int
    in_flight: int
    oldest_age_s: int | None
    dead: int
    paused: bool = False  # queues.pauses: no worker reads it


def _json(value: Any) -> Jsonb:
    """A value the worker made (a result checked when its handler returned, an error, a record)."""
    return storable.jsonb(value)


def _payload(body: Any) -> Jsonb:
    """A message body for pgmq.send: InvalidPayload, before anything is sent, if it may not be stored."""
    try:
        return storable.jsonb(body)
    except storable.Unstorable as exc:
        raise InvalidPayload(f"the payload cannot be stored: {exc}") from None


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


# -- queues ---------------------------------------------------------------------------------


def ensure_queue(conn: psycopg.Connection[Any], queue: str, *, partitioned: bool = False) -> bool:
    """Create the queue (partitioned: with pg_partman) and its dead-letter queue when missing,
    with queues.storage's settings; True when anything was created.

    Then move the queue's message ids past those of job rows left by an earlier queue of the same
    name (see STALE_JOB_IDS).
    """
    names = (validate_queue_name(queue), dlq_name(queue))
    missing = [n for n in names if conn.execute(QUEUE_EXISTS, (n,)).fetchone() is None]
    created = False
    if missing:
        # Workers starting at once on a new queue would race in pgmq.create (a UniqueViolation on
        # pgmq 1.4.4/1.5.1): one creates the pair under the lock, the others find it made.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("pgmq.create " + queue,))
            for name in missing:
                if conn.execute(QUEUE_EXISTS, (name,)).fetchone() is None:
                    storage.create_queue(conn, name, partitioned=partitioned and name == queue)
                    created = True
    _skip_stale_job_ids(conn, queue)
    return created


def _skip_stale_job_ids(conn: psycopg.Connection[Any], queue: str) -> None:
    params = {"table": f"pgmq.{table_name(queue)}", "queue": queue}
    stale = conn.execute(STALE_JOB_IDS, params).fetchone()
    if stale is None or not stale[0]:
        return
    with conn.transaction():  # the lock keeps senders out while the sequence moves forward
        conn.execute(sql.SQL("LOCK TABLE pgmq.{} IN SHARE ROW EXCLUSIVE MODE").format(_q(queue)))
        conn.execute(SKIP_STALE_JOB_IDS, params)


def queue_exists(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Whether pgmq has this queue."""
    return conn.execute(QUEUE_EXISTS, (queue,)).fetchone() is not None


async def aqueue_exists(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    """queue_exists on an async connection."""
    cur = await conn.execute(QUEUE_EXISTS, (queue,))
    return await cur.fetchone() is not None


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


def metrics(conn: psycopg.Connection[Any], queue: str, features: PgmqFeatures | None = None) -> QueueMetrics:
    """Depth, visible, in-flight and oldest age of a queue, and its dead-letter depth.

    `features`: what db.pgmq_install.detect found (detected here when not given).
    """
    visible_reported = (features or detect(conn)).metrics_visible
    statement = METRICS if visible_reported else METRICS_COUNTING_VISIBLE.format(q=_q(queue))
    row = conn.execute(statement, (queue,)).fetchone()
    assert row is not None  # noqa: S101  pgmq.metrics returns exactly one row
    depth, visible, oldest = int(row[0]), int(row[1]), row[2]
    dead = 0
    if queue_exists(conn, dlq_name(queue)):
        dead_row = conn.execute(QUEUE_LENGTH, (dlq_name(queue),)).fetchone()
        dead = int(dead_row[0]) if dead_row else 0
    # max: the count and the depth may come from two snapshots (pgmq.metrics reads in its own).
    return QueueMetrics(queue, depth, visible, max(depth - visible, 0), oldest, dead)


# -- sending ----------------------------------------------------------------------------------


def send(conn: psycopg.Connection[Any], queue: str, body: Any, delay_s: int = 0) -> int:
    """pgmq.send; returns the message id."""
    row = conn.execute(SEND, (queue, _payload(body), delay_s)).fetchone()
    assert row is not None  # noqa: S101  pgmq.send returns the new id
    return int(row[0])


def send_batch(
    conn: psycopg.Connection[Any], queue: str, bodies: Sequence[Any], delay_s: int = 0
) -> list[int]:
    """pgmq.send_batch; returns the message ids in order."""
    rows = conn.execute(SEND_BATCH, (queue, [_payload(b) for b in bodies], delay_s)).fetchall()
    return [int(r[0]) for r in rows]


async def asend_if_exists(
    conn: psycopg.AsyncConnection[Any], queue: str, body: str, delay_s: int = 0
) -> int | None:
    """pgmq.send of JSON object text on an async connection, without a job row; None if no such
    queue (nothing raised)."""
    cur = await conn.execute(SEND_IF_EXISTS, {"queue": queue, "body": body, "delay": delay_s})
    row = await cur.fetchone()
    return None if row is None else int(row[0])


# The dead letters have a module of their own; worker/cli.py still finds them here.
from queues.dead_letters import DeadLetterEntry as DeadLetterEntry  # noqa: E402, PLC0414
from queues.dead_letters import dead_letters as dead_letters  # noqa: E402, PLC0414
