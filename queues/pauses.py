"""Pausing a queue: no worker of the fleet reads it until it is resumed; sending into it goes on.

`pause(conn, queue, by=, reason=)` writes the queue's row in `pgmq_worker.queue_pauses`
(migration 0025) and `resume(conn, queue)` deletes it (`apause`, `aresume` for an async
connection). Both are idempotent: pausing a paused queue keeps the first pause (its time, who and
why) and says so (`Paused.already`); resuming a queue that is not paused returns None. Each worker
reads the paused set as it starts, at once when the table's trigger notifies it (where it
LISTENs), and every poll interval besides (worker/pauses.py): a pause holds for every worker
process on every machine within a poll interval of its commit. Deliveries already running finish
as usual; new messages wait in the queue.

Bad input raises before any statement: `InvalidQueueName` (not a name, or a dead-letter queue,
which no worker reads), `InvalidPauseNote` (a reason over MAX_REASON characters, a `by` over
MAX_BY, or either holding NUL); `UnknownQueue` when pgmq has no such queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

from db import storable
from db.logs import get_logger
from queues.errors import InvalidQueueName, QueueError, UnknownQueue
from queues.names import is_dlq, validate_queue_name

__all__ = [
    "CHANNEL",
    "MAX_BY",
    "MAX_REASON",
    "InvalidPauseNote",
    "Pause",
    "Paused",
    "apause",
    "apaused",
    "aresume",
    "check_pause",
    "pause",
    "paused",
    "resume",
]

log = get_logger()

CHANNEL: Final = "pgmq_worker.queue_pauses"  # what the table's trigger notifies (migration 0025)
MAX_REASON: Final = 500  # the table's CHECK constraints say the same
MAX_BY: Final = 200
COLUMNS = "queue, paused_at, paused_by, reason"
# Only a queue pgmq has; a queue paused already keeps its row (DO NOTHING returns no row).
PAUSE = (
    "INSERT INTO pgmq_worker.queue_pauses (queue, paused_by, reason)"
    " SELECT queue_name, %(by)s, %(reason)s FROM pgmq.meta WHERE queue_name = %(queue)s"
    f" ON CONFLICT (queue) DO NOTHING RETURNING {COLUMNS}"
)
PAUSED_ONE = f"SELECT {COLUMNS} FROM pgmq_worker.queue_pauses WHERE queue = %s"
RESUME = f"DELETE FROM pgmq_worker.queue_pauses WHERE queue = %s RETURNING {COLUMNS}"
KNOWN = "SELECT EXISTS (SELECT FROM pgmq.meta WHERE queue_name = %s)"
PAUSED_ALL = f"SELECT {COLUMNS} FROM pgmq_worker.queue_pauses ORDER BY queue"


class InvalidPauseNote(QueueError, ValueError):
    """A pause's reason is at most 500 characters and its `by` at most 200, neither holding NUL."""


@dataclass(frozen=True, slots=True)
class Pause:
    """A queue's pause: since when, by whom, why."""

    queue: str
    paused_at: datetime
    paused_by: str | None
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        """The pause as the CLI's `--json` and the dashboard's live rows give it."""
        return {
            "queue": self.queue,
            "paused_at": self.paused_at.isoformat(),
            "paused_by": self.paused_by,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Paused:
    """What `pause` did: the pause in force, and whether it was there already (nothing changed)."""

    pause: Pause
    already: bool


def _note(value: str | None, what: str, limit: int) -> str | None:
    """An empty note is no note; a long one, or one Postgres cannot hold, is refused."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidPauseNote(f"a pause's {what} is at most {limit} characters")
    if not value.strip():
        return None
    try:
        return storable.check_text(value)
    except storable.Unstorable as exc:
        raise InvalidPauseNote(f"a pause's {what} {exc.reason}") from exc


def check_pause(queue: str, by: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """The statement's parameters, checked: InvalidQueueName or InvalidPauseNote saying why not."""
    validate_queue_name(queue)
    if is_dlq(queue):
        raise InvalidQueueName(
            f"{queue!r} is a dead-letter queue: no worker reads it, there is nothing to pause"
        )
    return {"queue": queue, "by": _note(by, "by", MAX_BY), "reason": _note(reason, "reason", MAX_REASON)}


def _pause(row: tuple[Any, ...]) -> Pause:
    return Pause(str(row[0]), row[1], row[2], row[3])


def _paused(params: dict[str, Any], added: tuple[Any, ...] | None, kept: tuple[Any, ...] | None) -> Paused:
    if added is not None:
        done = Paused(_pause(added), already=False)
        log.info(
            "queue.paused", queue=done.pause.queue, paused_by=done.pause.paused_by, reason=done.pause.reason
        )
        return done
    if kept is None:  # no row added and none there: pgmq has no such queue
        raise UnknownQueue(f"no queue {params['queue']!r}")
    return Paused(_pause(kept), already=True)


def _resumed(queue: str, row: tuple[Any, ...] | None, known: bool) -> Pause | None:
    if row is None:
        if not known:
            raise UnknownQueue(f"no queue {queue!r}")
        return None
    lifted = _pause(row)
    log.info("queue.resumed", queue=queue, paused_at=lifted.paused_at.isoformat())
    return lifted


def pause(
    conn: psycopg.Connection[Any], queue: str, *, by: str | None = None, reason: str | None = None
) -> Paused:
    """Pause `queue` for every worker (see the module's docstring); commits on an autocommit connection."""
    params = check_pause(queue, by, reason)
    with conn.transaction():
        added = conn.execute(PAUSE, params).fetchone()
        kept = None if added is not None else conn.execute(PAUSED_ONE, (queue,)).fetchone()
    return _paused(params, added, kept)


async def apause(
    conn: psycopg.AsyncConnection[Any], queue: str, *, by: str | None = None, reason: str | None = None
) -> Paused:
    """`pause` for an async connection."""
    params = check_pause(queue, by, reason)
    async with conn.transaction():
        added = await (await conn.execute(PAUSE, params)).fetchone()
        kept = None if added is not None else await (await conn.execute(PAUSED_ONE, (queue,))).fetchone()
    return _paused(params, added, kept)


def resume(conn: psycopg.Connection[Any], queue: str) -> Pause | None:
    """Let workers read `queue` again: the pause lifted, or None when it was not paused."""
    check_pause(queue)
    with conn.transaction():
        row = conn.execute(RESUME, (queue,)).fetchone()
        known = row is not None or bool((conn.execute(KNOWN, (queue,)).fetchone() or (False,))[0])
    return _resumed(queue, row, known)


async def aresume(conn: psycopg.AsyncConnection[Any], queue: str) -> Pause | None:
    """`resume` for an async connection."""
    check_pause(queue)
    async with conn.transaction():
        row = await (await conn.execute(RESUME, (queue,))).fetchone()
        known = row is not None or bool(
            (await (await conn.execute(KNOWN, (queue,))).fetchone() or (False,))[0]
        )
    return _resumed(queue, row, known)


def paused(conn: psycopg.Connection[Any]) -> dict[str, Pause]:
    """Every paused queue's pause, by queue (the gauges, `pgmq-worker queues`)."""
    return {p.queue: p for p in map(_pause, conn.execute(PAUSED_ALL).fetchall())}


async def apaused(conn: psycopg.AsyncConnection[Any]) -> dict[str, Pause]:
    """`paused` for an async connection (the workers, the dashboard)."""
    return {p.queue: p for p in map(_pause, await (await conn.execute(PAUSED_ALL)).fetchall())}
