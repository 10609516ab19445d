"""Concurrent `POST /jobs` requests for one queue, sent to the database in one statement.

A request goes to the database at once while fewer than `MAX_STATEMENTS` of the process's
enqueue statements are in flight. Otherwise it waits for one of them to finish, and every
request of its queue that arrived meanwhile goes with it in the next statement
(queues.enqueue.aenqueue_each: each its own message, job row, delay and owner, in order). A lone
request is sent as it always was, with the same statement; under load one round trip, one
commit and one insert notification carry many jobs, as a database's group commit carries many
transactions. A request is answered once the statement holding its job has committed, never
before.

A statement of several requests that fails for a reason that may be one request's own (any
database error but a lost connection, a pool timeout or an unknown queue, which would fail each
of them alone too) is tried again one request at a time, so that each gets its own answer and
none fails for another's.

Requests with an Idempotency-Key do not come here: theirs is a lookup, then a send in a
savepoint (queues.enqueue.aenqueue).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from queues.enqueue import Enqueued, Outgoing, aenqueue_each, asend
from queues.errors import QueueError
from web.errors import DB_ERRORS

# Statements in flight at once, per web process. Two keep the database busy while the next batch
# gathers (one is being answered while the other runs); more would send requests alone again.
MAX_STATEMENTS: Final = 2
MAX_BATCH: Final = 500  # requests in one statement
# Body characters in one statement: a request may carry up to 1 MiB, and 500 of those in one
# parameter would be half a gigabyte in the web process and the server. A request larger than
# this alone still goes, alone.
MAX_BATCH_CHARS: Final = 4 * 1024 * 1024


def _future() -> asyncio.Future[Enqueued]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Waiting:
    send: Outgoing
    answer: asyncio.Future[Enqueued] = field(default_factory=_future)


class Coalescer:
    """Send checked, unkeyed enqueues (`Outgoing.of`) on the pool, many to a statement under load."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        statements: int = MAX_STATEMENTS,
        batch: int = MAX_BATCH,
        batch_chars: int = MAX_BATCH_CHARS,
    ) -> None:
        if statements < 1 or batch < 1 or batch_chars < 1:
            raise ValueError("statements, batch and batch_chars must be at least 1")
        self.pool = pool
        self.statements = statements
        self.batch = batch
        self.batch_chars = batch_chars
        self._waiting: OrderedDict[str, list[_Waiting]] = OrderedDict()  # by queue, oldest queue first
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent_statements = 0  # statements sent, and the requests they carried (tests, benchmarks)
        self.sent_requests = 0

    async def enqueue(self, send: Outgoing) -> Enqueued:
        """The job `send` made, once its statement committed; the error it would have met alone."""
        if send.key is not None or send.webhook is not None:
            raise ValueError("the coalescer takes unkeyed enqueues without a webhook")
        waiting = _Waiting(send)
        self._waiting.setdefault(send.queue, []).append(waiting)
        self._start()
        return await waiting.answer

    def _start(self) -> None:
        """Send what waits, a statement per queue, while fewer than `statements` are in flight."""
        while self._waiting and self._in_flight < self.statements:
            queue, waiting = next(iter(self._waiting.items()))
            count = self._fits(waiting)
            taken, rest = waiting[:count], waiting[count:]
            if rest:
                self._waiting[queue] = rest
                self._waiting.move_to_end(queue)
            else:
                del self._waiting[queue]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _fits(self, waiting: list[_Waiting]) -> int:
        """How many of the oldest waiting requests the next statement takes (at least one)."""
        chars = 0
        for count, w in enumerate(waiting[: self.batch]):
            chars += len(w.send.body)
            if count and chars > self.batch_chars:
                return count
        return min(len(waiting), self.batch)

    async def _send(self, taken: list[_Waiting]) -> None:
        try:
            await self._answer(taken)
        finally:
            self._in_flight -= 1
            self._start()

    async def _answer(self, taken: list[_Waiting]) -> None:
        """Send `taken` in one statement and answer each; alone again when that failed for one."""
        try:
            sent = await self._statement([w.send for w in taken])
        except (*DB_ERRORS, QueueError) as exc:  # would fail each alone too
            _fail(taken, exc)
        except psycopg.Error as exc:
            if len(taken) == 1:
                _fail(taken, exc)
                return
            for waiting in taken:
                await self._answer([waiting])
        except asyncio.CancelledError:  # the process is stopping
            for waiting in taken:
                waiting.answer.cancel()
            raise
        except Exception as exc:  # a bug: no request waits for ever
            _fail(taken, exc)
            raise
        else:
            for waiting, enqueued in zip(taken, sent, strict=True):
                if not waiting.answer.done():  # its request may have been cancelled meanwhile
                    waiting.answer.set_result(enqueued)

    async def _statement(self, sends: list[Outgoing]) -> list[Enqueued]:
        self.sent_statements += 1
        self.sent_requests += len(sends)
        async with self.pool.connection() as conn:
            if len(sends) == 1:
                return [await asend(conn, sends[0])]
            return await aenqueue_each(conn, sends)


def _fail(taken: list[_Waiting], exc: BaseException) -> None:
    for waiting in taken:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
