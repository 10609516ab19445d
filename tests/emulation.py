"""Make a pgmq 1.13 SQL install look like an older Supabase pgmq, by dropping what it lacked."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

# Functions pgmq 1.5.1 (Supabase) does not have, by name prefix: insert notifications, grouped
# (FIFO) reads and their indexes, topics; overloads of set_vt (batch, timestamp) and pop(qty)
# are matched by signature below.
MISSING_IN_1_5_1 = (
    "enable_notify_insert",
    "disable_notify_insert",
    "list_notify_insert_throttles",
    "update_notify_insert",
    "notify_queue_listeners",
    "read_grouped",
    "create_fifo_index",
    "_create_fifo_index_if_not_exists",
    "bind_topic",
    "unbind_topic",
    "send_topic",
    "send_batch_topic",
    "list_topic_bindings",
    "test_routing",
    "validate_routing_key",
    "validate_topic_pattern",
)

SIGNATURES = """
SELECT p.oid::regprocedure::text, p.proname, pg_get_function_identity_arguments(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgmq'
"""


def emulate(conn: psycopg.Connection[Any], version: str) -> None:
    """Drop what pgmq `version` lacked (only 1.5.1 is modelled) and record that version."""
    if version != "1.5.1":
        raise ValueError(f"no emulation for pgmq {version}")
    for regproc, name, args in conn.execute(SIGNATURES).fetchall():
        lacks = name.startswith(MISSING_IN_1_5_1)
        lacks |= name == "set_vt" and ("[]" in args or "timestamp" in args)
        lacks |= name == "pop" and "integer" in args
        if lacks:
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} CASCADE").format(sql.SQL(regproc)))
    conn.execute("UPDATE pgmq_worker.pgmq_sql_install SET version = %s", (version,))
