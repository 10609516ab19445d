"""Batched acks: successful deliveries are deleted (and their jobs marked) many per statement.

A handler that succeeds hands its delivery to `Acks.ack_then` with a callback, and its task
ends. One flusher writes whatever has gathered, per queue, in a single lease-guarded statement,
while the next acks gather behind it: an idle worker acks at once (a batch of one), a busy one
acks in batches as large as the statements are slow, with one pool checkout per batch instead of
per message. When a batch lands (or fails) the flusher calls each delivery's callback.

A batch that fails on one member's data (a result Postgres refuses) must not take its batch-mates
with it: on an error that is not the connection's (`batch_errors`), the halves are written
separately, down to the one that fails, whose callback alone gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from db.logs import get_logger
from queues import pgmq
from queues.pgmq import Message

log = get_logger()

MAX_BATCH = 500

# Called once per delivery with True (acked), False (no longer ours: not acked) or the error.
Landed = Callable[[bool | BaseException], object]
Pending = tuple[Message, Any, Landed]


class Acks:
    """Gathers successful deliveries and acks them in batches; each waiter learns if it was still ours."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        max_batch: int = MAX_BATCH,
        *,
        batch_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.pool = pool
        self.max_batch = max_batch
        # The connection's errors (database trouble, a pooler), not a member's: no split helps.
        self.batch_errors = batch_errors
        self._pending: dict[tuple[str, bool], list[Pending]] = {}  # by (queue, job rows)
        self._writing: list[Pending] = []  # the batch being written
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever nothing is pending
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.acked = 0
        self.pending = 0  # handed over, callback not yet called

    def start(self) -> asyncio.Task[None]:
        """Start the flusher (the caller watches its task: it ends only when closed)."""
        self._task = asyncio.create_task(self._run(), name="acks")
        return self._task

    async def flushed(self) -> None:
        """Return once everything handed over so far has been written (or failed), callbacks called."""
        if self.pending:
            await self._drained.wait()

    @property
    def dead(self) -> bool:
        """The flusher ended (it never does on its own): what is pending will not be written."""
        return self._task is not None and self._task.done()

    def abandon(self) -> list[Message]:
        """Take back every pending delivery, callbacks not called (the flusher died; release them)."""
        taken = [m for items in [self._writing, *self._pending.values()] for m, _, _ in items]
        self._pending.clear()
        self._writing = []
        self.pending = 0
        self._drained.set()
        return taken

    async def close(self) -> None:
        """Stop the flusher once everything handed to it has been written (or failed)."""
        if self._task is None:
            return
        if not self._task.done():  # a dead flusher was reported by whoever watched it
            await self.flushed()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def ack_then(self, message: Message, result: Any, landed: Landed) -> None:
        """Ack one delivery in the next batch, then call `landed` (see Landed).

        The hot path: no future and no task to wake per delivery. The batch is written whether
        or not anyone still waits for it.
        """
        if self._task is None:
            raise RuntimeError("Acks.start() was not called")
        batch = (message.queue, message.job_id is not None)
        self._pending.setdefault(batch, []).append((message, result, landed))
        self.pending += 1
        self._drained.clear()
        self._wake.set()

    def ack(self, message: Message, result: Any) -> asyncio.Future[bool]:
        """ack_then, as a future: True if the delivery was still ours; database errors are raised."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def landed(outcome: bool | BaseException) -> None:
            if future.done():  # the waiter was cancelled
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.ack_then(message, result, landed)
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = next(iter(self._pending))
                items = self._pending[batch][: self.max_batch]
                rest = self._pending[batch][self.max_batch :]
                if rest:
                    self._pending[batch] = rest
                else:
                    del self._pending[batch]
                self._writing = items
                await self._flush(*batch, items)
                self._writing = []
            self._drained.set()

    async def _flush(self, queue: str, job_rows: bool, items: list[Pending]) -> None:
        done = [(m.msg_id, m.read_ct, result) for m, result, _ in items]
        try:
            async with self.pool.connection(timeout=5) as conn:
                settled = await pgmq.ack_many(conn, queue, done, job_rows=job_rows)
        except Exception as exc:  # each delivery decides (the settle loop retries database trouble)
            if len(items) > 1 and not isinstance(exc, self.batch_errors):
                # A member's value (most likely one result): the statement wrote nothing. Bisect,
                # so the others land and the bad one alone gets the error (about 2 log2(n) writes).
                log.debug("acks.batch_split", queue=queue, size=len(items), error=type(exc).__name__)
                half = len(items) // 2
                await self._flush(queue, job_rows, items[:half])
                await self._flush(queue, job_rows, items[half:])
                return
            for _, _, landed in items:
                self._call(landed, exc)
            return
        self.batches += 1
        self.acked += len(settled)
        for message, _, landed in items:
            self._call(landed, message.msg_id in settled)

    def _call(self, landed: Landed, outcome: bool | BaseException) -> None:
        self.pending -= 1
        try:
            landed(outcome)
        except Exception:  # a callback's bug must not stop the flusher (every later ack would hang)
            log.exception("acks.callback_failed")
