"""Dead letters: what `<queue>_dlq` holds (queues/retry.py sends them back, or purges them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from queues.names import dlq_name, table_name


def _q(queue: str) -> sql.Identifier:
    return sql.Identifier(table_name(queue))


PEEK = sql.SQL("SELECT msg_id, enqueued_at, message FROM pgmq.{q} ORDER BY msg_id LIMIT %s")


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
