"""Batched acks: successful deliveries are deleted (and their jobs marked) many per statement.

A handler that succeeds hands its delivery to `Acks.ack` and waits. One flusher writes whatever
has gathered, per queue, in a single lease-guarded statement, while the next acks gather behind
it: an idle worker acks at once (a batch of one), a busy one acks in batches as large as the
statements are slow, with one pool checkout per batch instead of per message.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from psycopg_pool import AsyncConnectionPool

from queues import pgmq
from queues.pgmq import Message

MAX_BATCH = 500

Pending = tuple[Message, Any, "asyncio.Future[bool]"]


class Acks:
    """Gathers successful deliveries and acks them in batches; each waiter learns if it was still ours."""

    def __init__(self, pool: AsyncConnectionPool, max_batch: int = MAX_BATCH) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._pending: dict[tuple[str, bool], list[Pending]] = {}  # by (queue, job rows)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever nothing is pending
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.acked = 0

    def start(self) -> None:
        """Start the flusher."""
        self._task = asyncio.create_task(self._run(), name="acks")

    async def close(self) -> None:
        """Stop the flusher once everything handed to it has been written (or failed)."""
        if self._task is None:
            return
        if self._pending:
            await self._drained.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def ack(self, message: Message, result: Any) -> asyncio.Future[bool]:
        """Ack one delivery in the next batch; the future is True if it was still ours.

        A future, not a coroutine: the batch is written whether or not anyone still awaits it
        (the caller may be cancelled meanwhile), and awaiting it costs no task of its own.
        Database errors are set on the future.
        """
        if self._task is None:
            raise RuntimeError("Acks.start() was not called")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        batch = (message.queue, message.job_id is not None)
        self._pending.setdefault(batch, []).append((message, result, future))
        self._drained.clear()
        self._wake.set()
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
                await self._flush(*batch, items)
            self._drained.set()

    async def _flush(self, queue: str, job_rows: bool, items: list[Pending]) -> None:
        done = [(m.msg_id, m.read_ct, result) for m, result, _ in items]
        try:
            async with self.pool.connection(timeout=5) as conn:
                settled = await pgmq.ack_many(conn, queue, done, job_rows=job_rows)
        except Exception as exc:  # each waiter decides (the settle loop retries database trouble)
            for _, _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.acked += len(settled)
        for message, _, future in items:
            if not future.done():
                future.set_result(message.msg_id in settled)
