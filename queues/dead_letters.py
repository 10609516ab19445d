"""Dead letters: what `<queue>_dlq` holds, and sending its payloads back to their queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from queues.names import dlq_name, table_name
from queues.pgmq import send_batch


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


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
