"""Every runtime statement against pgmq, each behind one small typed function.

Queue management goes through pgmq's own SQL functions, restricted to those pgmq 1.4 already has
(Supabase runs 1.4.4/1.5.1). The hot statements touch the queue table directly, on the columns
every pgmq version has (msg_id, read_ct, enqueued_at, vt, message): the send and the read are
pgmq's own INSERT and UPDATE, prepared once instead of planned on every call inside plpgsql, and
the lease-guarded ones (extend, ack, retry, dead-letter, release) must be ours: pgmq's
delete/archive/set_vt match the message id alone, and a worker whose lease expired must not
settle the delivery another worker now holds. `read_ct` is the delivery's fencing token: every
read bumps it, so (msg_id, read_ct) names one delivery.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from db import storable
from db.pgmq_install import PgmqFeatures, detect
from queues.errors import InvalidPayload, UnknownQueue
from queues.ids import uuid7, uuid7_batch, uuid7_bytes
from queues.names import dlq_name, table_name, validate_queue_name

QUEUE_EXISTS = "SELECT 1 FROM pgmq.meta WHERE queue_name = %s"
CREATE_QUEUE = "SELECT pgmq.create(%s)"
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
# Read: what pgmq.read does, as our own statement on the queue's table. pgmq.read builds this
# UPDATE with format() and plans it again on every call (plpgsql EXECUTE); ours is prepared once
# per connection. An idle worker's pickup is one cold read, and that planning was a quarter of it
# (0.3-0.4 ms of 1.1-1.5, embedded PostgreSQL 18). pgmq 1.10+ also stamps last_read_at, where the
# table has it: `{stamp}`.
LEASE = """
    WITH c AS (
        SELECT msg_id FROM pgmq.{q} WHERE vt <= clock_timestamp()
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
# that other clients sent with plain pgmq.send, which have none yet).
READ = """
WITH taken AS ({take}), m AS (
    SELECT msg_id, read_ct, enqueued_at, vt, message, row_number() OVER () AS n FROM taken
), job AS (
    INSERT INTO pgmq_worker.jobs AS j (id, queue, msg_id, status, attempts, created_at, started_at)
    SELECT encode(substring(%(ids)s::bytea FROM (m.n::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid,
        %(queue)s, m.msg_id, 'running', m.read_ct, m.enqueued_at, now() FROM m
    ON CONFLICT (queue, msg_id) DO UPDATE
        SET status = 'running', attempts = EXCLUDED.attempts,
            started_at = coalesce(j.started_at, EXCLUDED.started_at), updated_at = now()
    RETURNING j.msg_id, j.id, j.deferrals, j.webhook_url, j.timeout_s, j.max_attempts
)
SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, job.id AS job_id, job.deferrals,
    job.webhook_url, job.timeout_s, job.max_attempts
FROM m JOIN job USING (msg_id) ORDER BY m.msg_id
"""
# The same for a queue whose handler runs without job rows (`@handler(..., job_rows=False)`).
READ_PLAIN = (
    "WITH taken AS ({take}) SELECT msg_id, read_ct, enqueued_at, vt, message FROM taken ORDER BY msg_id"
)
# Enqueue: the message and its job row in one statement, so neither exists without the other.
# The message goes straight into the queue's table, the INSERT pgmq.send runs inside (vt, message;
# the other columns keep their defaults on every pgmq version): pgmq.send builds and plans that
# INSERT in plpgsql on every call, and this statement, prepared once, costs 1.6x less at 8
# producers. A missing table fails at parse time, aborting the caller's transaction, so a queue
# is looked up in pgmq.meta before this process first sends to it on a database (`_sendable`).
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
SEND_IF_EXISTS = """
SELECT s.msg_id
FROM pgmq.meta AS q, LATERAL pgmq.send(q.queue_name, %(body)s::jsonb, %(delay)s::integer) AS s(msg_id)
WHERE q.queue_name = %(queue)s
"""
# The bodies travel as one JSON array, split on the server: a jsonb[] parameter costs the client a
# quoting pass over every element (40% of a 1000-message enqueue_batch). They are inserted in
# array order, as pgmq.send_batch inserts its array, so the n-th lowest msg_id is the n-th body.
# The job ids (queues.ids: time-ordered, made by the client) travel as one bytea of 16 bytes each,
# the n-th for the n-th body, so the caller need not parse ids back.
SEND_JOB_BATCH = sql.SQL("""
WITH sent AS (
    INSERT INTO pgmq.{q} (vt, message)
    SELECT d.vt, b.body
    FROM (SELECT clock_timestamp() + make_interval(secs => %(delay)s::integer) AS vt) AS d,
        jsonb_array_elements(%(bodies)s::jsonb) WITH ORDINALITY AS b(body, n)
    ORDER BY b.n
    RETURNING msg_id
), numbered AS (SELECT msg_id, row_number() OVER (ORDER BY msg_id) AS n FROM sent)
INSERT INTO pgmq_worker.jobs (id, queue, msg_id, status, owner)
SELECT encode(substring(%(ids)s::bytea FROM (numbered.n::integer - 1) * 16 + 1 FOR 16), 'hex')::uuid,
    %(queue)s, numbered.msg_id, 'queued', %(owner)s
FROM numbered
RETURNING msg_id
""")
ACTIVE_JOB = (
    "SELECT id, msg_id FROM pgmq_worker.jobs WHERE queue = %s AND idempotency_key = %s"
    " AND status IN ('queued', 'running', 'failed')"
)
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
# Idle, listening workers announce themselves so the insert trigger notifies (migration 0013).
# Rows of workers that died long ago are swept by whoever announces next.
ANNOUNCE_WAITING = """
WITH swept AS (DELETE FROM pgmq_worker.waiters WHERE until < now() - interval '10 minutes')
INSERT INTO pgmq_worker.waiters AS w (queue_table, worker, until)
SELECT t, %(worker)s, now() + make_interval(secs => %(ttl)s) FROM unnest(%(tables)s::text[]) AS t
ON CONFLICT (queue_table, worker) DO UPDATE SET until = EXCLUDED.until
"""
WITHDRAW_WAITING = "DELETE FROM pgmq_worker.waiters WHERE worker = %s"
CREATE_INSERT_TRIGGER = sql.SQL(
    "CREATE TRIGGER {trigger} AFTER INSERT ON pgmq.{q} "
    "FOR EACH STATEMENT EXECUTE FUNCTION pgmq_worker.notify_insert()"
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
    " finished_at = CASE WHEN %(status)s IN ('succeeded', 'dead') THEN now() END,"
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

    @property
    def attempt(self) -> int:
        """This delivery's attempt number: deliveries so far, less the deferred ones."""
        return self.read_ct - self.deferrals


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


def ensure_queue(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Create the queue and its dead-letter queue when missing; True when anything was created.

    Then move the queue's message ids past those of job rows left by an earlier queue of the same
    name (see STALE_JOB_IDS).
    """
    created = False
    for name in (validate_queue_name(queue), dlq_name(queue)):
        if conn.execute(QUEUE_EXISTS, (name,)).fetchone() is None:
            conn.execute(CREATE_QUEUE, (name,))
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


async def announce_waiting(
    conn: psycopg.AsyncConnection[Any], worker: str, queues: Sequence[str], ttl_s: float
) -> None:
    """This worker waits on `queues` for the next `ttl_s` seconds: their inserts should notify."""
    await conn.execute(
        ANNOUNCE_WAITING, {"worker": worker, "tables": [table_name(q) for q in queues], "ttl": ttl_s}
    )


async def withdraw_waiting(conn: psycopg.AsyncConnection[Any], worker: str) -> None:
    """This worker no longer waits (it is stopping)."""
    await conn.execute(WITHDRAW_WAITING, (worker,))


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


# Queues this process has seen in pgmq.meta, by database: (host, port, dbname, queue).
_SENDABLE: set[tuple[str, int, str, str]] = set()


def _queue_key(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], queue: str
) -> tuple[str, int, str, str]:
    """One queue in one database: the key of what this process remembers about it."""
    info = conn.info
    return (info.host, info.port, info.dbname, queue)


def _sendable(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Whether the queue exists, from pgmq.meta the first time (for this database), then remembered."""
    key = _queue_key(conn, queue)
    if key in _SENDABLE:
        return True
    if not queue_exists(conn, queue):
        return False
    _SENDABLE.add(key)
    return True


async def _asendable(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    """_sendable on an async connection."""
    key = _queue_key(conn, queue)
    if key in _SENDABLE:
        return True
    if not await aqueue_exists(conn, queue):
        return False
    _SENDABLE.add(key)
    return True


@contextlib.contextmanager
def _dropped_as_unknown(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], queue: str
) -> Iterator[None]:
    """Turn "the queue's table does not exist" (dropped since we saw it) into UnknownQueue."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        if table_name(queue) not in str(exc):
            raise
        _SENDABLE.discard(_queue_key(conn, queue))
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
    A queue dropped since this process first sent to it raises UnknownQueue (the transaction the
    statement ran in has failed).
    """
    if not _sendable(conn, queue):
        return None
    params = _job_params(queue, body, delay_s, owner=owner, key=key, webhook=webhook)
    with _dropped_as_unknown(conn, queue):
        row = conn.execute(_send_statement(queue, batch=False), params).fetchone()
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
    if not await _asendable(conn, queue):
        return None
    params = _job_params(queue, body, delay_s, owner=owner, key=key, webhook=webhook)
    with _dropped_as_unknown(conn, queue):
        cur = await conn.execute(_send_statement(queue, batch=False), params)
    row = await cur.fetchone()
    assert row is not None  # noqa: S101  one message, one job row
    return params["id"], int(row[0])


async def asend_if_exists(
    conn: psycopg.AsyncConnection[Any], queue: str, body: str, delay_s: int = 0
) -> int | None:
    """pgmq.send of JSON object text on an async connection, without a job row; None if no such
    queue (nothing raised)."""
    cur = await conn.execute(SEND_IF_EXISTS, {"queue": queue, "body": body, "delay": delay_s})
    row = await cur.fetchone()
    return None if row is None else int(row[0])


def send_job_batch(
    conn: psycopg.Connection[Any], queue: str, bodies: str, n: int, *, delay_s: int, owner: UUID | None
) -> list[tuple[UUID, int]]:
    """The n messages in `bodies` (a JSON array of objects) and a job row for each, in order.

    Returns (job id, msg_id) per body; empty if the queue does not exist (see send_job for one
    dropped since).
    """
    if not _sendable(conn, queue):
        return []
    raw, ids = uuid7_batch(n)
    params = {"queue": queue, "bodies": bodies, "ids": raw, "delay": delay_s, "owner": owner}
    with _dropped_as_unknown(conn, queue):
        rows = conn.execute(_send_statement(queue, batch=True), params).fetchall()
    return list(zip(ids, sorted(int(r[0]) for r in rows), strict=True))


def active_job(conn: psycopg.Connection[Any], queue: str, key: str) -> tuple[UUID, int] | None:
    """The unfinished job enqueued with this idempotency key, if any."""
    row = conn.execute(ACTIVE_JOB, (queue, key)).fetchone()
    return None if row is None else (row[0], int(row[1]))


async def aactive_job(conn: psycopg.AsyncConnection[Any], queue: str, key: str) -> tuple[UUID, int] | None:
    """active_job on an async connection."""
    cur = await conn.execute(ACTIVE_JOB, (queue, key))
    row = await cur.fetchone()
    return None if row is None else (row[0], int(row[1]))


# -- the worker's side: read, lease, settle -----------------------------------------------------


async def read(
    conn: psycopg.AsyncConnection[Any], queue: str, vt_s: int, qty: int, *, job_rows: bool = True
) -> list[Message]:
    """What pgmq.read does: up to qty messages, invisible for vt_s, read_ct + 1; job rows `running`.

    job_rows=False: the read alone; the messages come without a job (job_id None).
    """
    statement = await _read_statement(conn, queue, job_rows=job_rows)
    if not job_rows:
        cur = await conn.execute(statement, {"vt": vt_s, "qty": qty})
        return [Message(queue, r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]
    ids = uuid7_bytes(qty)  # for the job rows it creates (time-ordered, see queues.ids)
    cur = await conn.execute(statement, {"queue": queue, "vt": vt_s, "qty": qty, "ids": ids})
    # READ's columns are Message's fields in order (tuples: no dict per row on the hot path).
    return [Message(queue, *r) for r in await cur.fetchall()]


# (host, port, dbname, queue) -> whether the queue's table has last_read_at (pgmq 1.10+).
_STAMPS_LAST_READ: dict[tuple[str, int, str, str], bool] = {}


async def _read_statement(conn: psycopg.AsyncConnection[Any], queue: str, *, job_rows: bool) -> str:
    """READ (or READ_PLAIN) for the queue's table, asking once per database whether to stamp last_read_at."""
    key = _queue_key(conn, queue)
    stamp = _STAMPS_LAST_READ.get(key)
    if stamp is None:
        cur = await conn.execute(HAS_LAST_READ_AT, ("pgmq." + table_name(queue),))
        row = await cur.fetchone()
        stamp = bool(row[0]) if row is not None else False
        if row is not None:  # no table: the read fails as pgmq.read would, and we ask again next time
            _STAMPS_LAST_READ[key] = stamp
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


async def retry_later(
    conn: psycopg.AsyncConnection[Any], message: Message, delay_s: float, error: dict[str, Any]
) -> bool:
    """Make the delivery visible again after delay_s, if still ours; job `failed` with the error."""
    return await _settle(conn, RETRY, message, "failed", error=error, delay=delay_s)


async def defer(
    conn: psycopg.AsyncConnection[Any], message: Message, delay_s: float, error: dict[str, Any]
) -> bool:
    """Visible again after delay_s, if still ours; job `queued`, one more deferral (not an attempt)."""
    return await _settle(conn, RETRY, message, "queued", error=error, delay=delay_s, deferral=True)


async def park(conn: psycopg.AsyncConnection[Any], message: Message, delay_s: float) -> bool:
    """Hide the delivery for delay_s, if still ours, job still `running`: a parent waiting for children.

    Counted as a deferral: waking up is not another attempt.
    """
    return await _settle(conn, RETRY, message, "running", delay=delay_s, deferral=True)


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
