"""How a queue's table is created: plain or partitioned, and the storage parameters it gets.

A queue deletes (or archives) every message it finishes, so its table gains a dead row version
per read and one per delete; autovacuum's default trigger (20 % of the table dead) lets a busy
queue's table, small while it drains, bloat many times over between vacuums. A queue the worker
creates gets its own settings instead, visible as storage parameters (`\\d+ pgmq.q_<queue>`,
docs/concepts/under-pressure.md): vacuum after QUEUE_DEAD_ROWS dead rows whatever the table's size,
unthrottled (the table is small when it is kept clean). A queue created by other means keeps
what it has: ensure_queue changes nothing it did not create.

Partitioned queues (`@handler(..., partitioned=True)`): pgmq.create_partitioned, which needs the
pg_partman extension (created here when the server has it and the database does not). pgmq
1.4.4, 1.5.1 and the 1.13 SQL all call pg_partman's create_parent with the type its major version
takes ('native' for 4.x, 'range' for 5.x), so any of them works with either.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from queues.errors import QueueStorageError
from queues.names import table_name

CREATE_QUEUE = "SELECT pgmq.create(%s)"
CREATE_PARTITIONED = "SELECT pgmq.create_partitioned(%s)"  # pgmq's intervals: 10,000 ids a partition
PARTMAN_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
PARTMAN_AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman'"
CREATE_PARTMAN = "CREATE EXTENSION IF NOT EXISTS pg_partman"
QUEUE_DEAD_ROWS = 1000
QUEUE_STORAGE = sql.SQL(
    "ALTER TABLE pgmq.{} SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = "
    + str(QUEUE_DEAD_ROWS)
    + ", autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = "
    + str(QUEUE_DEAD_ROWS)
    + ", autovacuum_vacuum_cost_delay = 0)"
)


def create_queue(conn: psycopg.Connection[Any], name: str, *, partitioned: bool = False) -> None:
    """Create the pgmq queue `name` (plain, or partitioned with pg_partman) with our storage settings."""
    if not partitioned:
        conn.execute(CREATE_QUEUE, (name,))
        tune(conn, name)
        return
    partman_version(conn, create=True)
    conn.execute(CREATE_PARTITIONED, (name,))


def tune(conn: psycopg.Connection[Any], name: str) -> bool:
    """Set the queue table's autovacuum parameters; False when this role may not (not its owner)."""
    try:
        with conn.transaction():  # a savepoint inside the caller's transaction
            conn.execute(QUEUE_STORAGE.format(sql.Identifier(table_name(name))))
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def partman_version(conn: psycopg.Connection[Any], *, create: bool = False) -> str:
    """pg_partman's version in this database (created first if `create` and the server has it).

    Raises QueueStorageError naming what to install when it is missing.
    """
    row = conn.execute(PARTMAN_VERSION).fetchone()
    if row is None and create and conn.execute(PARTMAN_AVAILABLE).fetchone() is not None:
        with conn.transaction():
            conn.execute(CREATE_PARTMAN)
        row = conn.execute(PARTMAN_VERSION).fetchone()
    if row is None:
        raise QueueStorageError(
            "a partitioned queue needs the pg_partman extension, which this server does not have "
            "(Debian/Ubuntu: apt install postgresql-<version>-partman; Supabase: enable pg_partman)"
        )
    return str(row[0])
