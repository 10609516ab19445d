"""Enqueue from web processes: sync for Flask, async for FastAPI, on the caller's connection.

The caller passes an open connection (or one inside its own transaction), so the message commits
or rolls back with the caller's writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from pydantic import BaseModel

from queues import pgmq
from queues.contract import Contract, QueueRef, queue_of
from queues.errors import InvalidPayload, UnknownQueue

MAX_PAYLOAD_BYTES = 1024 * 1024  # pgmq stores jsonb rows; a megabyte is already a big message


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Where a message went."""

    queue: str
    msg_id: int


def prepare(ref: QueueRef, payload: Any) -> tuple[str, dict[str, Any]]:
    """Validate the payload against the contract (when given) and return (queue, JSON object)."""
    queue = queue_of(ref)
    if isinstance(ref, Contract):
        body: Any = ref.parse(payload).model_dump(mode="json")
    elif isinstance(payload, BaseModel):
        body = payload.model_dump(mode="json")
    else:
        body = payload
    if not isinstance(body, dict):
        raise InvalidPayload(f"a message must be a JSON object, got {type(body).__name__}")
    try:
        size = len(json.dumps(body, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload is not JSON-serialisable: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(
            f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit: "
            "store large data in a table or bucket and send its id"
        )
    return queue, body


def _delay_s(delay: float | timedelta | None) -> int:
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0:
        raise InvalidPayload(f"delay must not be negative, got {seconds}")
    return round(seconds)  # pgmq.send takes whole seconds on every version we support


def enqueue(
    conn: psycopg.Connection[Any],
    ref: QueueRef,
    payload: Any,
    *,
    delay: float | timedelta | None = None,
) -> Enqueued:
    """Send one message on the caller's connection; it commits with the caller's transaction."""
    queue, body = prepare(ref, payload)
    delay_s = _delay_s(delay)
    if not pgmq.queue_exists(conn, queue):
        raise UnknownQueue(f"no queue named {queue!r}: start a worker for it, or create it first")
    return Enqueued(queue, pgmq.send(conn, queue, body, delay_s))


def enqueue_batch(
    conn: psycopg.Connection[Any],
    ref: QueueRef,
    payloads: Sequence[Any],
    *,
    delay: float | timedelta | None = None,
) -> list[Enqueued]:
    """Send many messages in one statement; all are validated before any is written."""
    prepared = [prepare(ref, p) for p in payloads]
    if not prepared:
        return []
    queue = prepared[0][0]
    if not pgmq.queue_exists(conn, queue):
        raise UnknownQueue(f"no queue named {queue!r}: start a worker for it, or create it first")
    ids = pgmq.send_batch(conn, queue, [body for _, body in prepared], _delay_s(delay))
    return [Enqueued(queue, i) for i in ids]


async def aenqueue(
    conn: psycopg.AsyncConnection[Any],
    ref: QueueRef,
    payload: Any,
    *,
    delay: float | timedelta | None = None,
) -> Enqueued:
    """The async twin of enqueue, for FastAPI."""
    queue, body = prepare(ref, payload)
    delay_s = _delay_s(delay)
    cur = await conn.execute(pgmq.QUEUE_EXISTS, (queue,))
    if await cur.fetchone() is None:
        raise UnknownQueue(f"no queue named {queue!r}: start a worker for it, or create it first")
    return Enqueued(queue, await pgmq.asend(conn, queue, body, delay_s))
