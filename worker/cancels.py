"""Cancels: noticing that a job this worker holds was cancelled, and stopping its handler.

`queues.cancel` marks a running job (`cancel_requested_at`); this part finds the mark for the
deliveries in flight and acts on it:

- every heartbeat interval, one query by primary key over the job ids held (none when idle).
  Polled rather than LISTENed: it works behind a transaction pooler (Supavisor 6543), a missed
  notification cannot lose a cancel, and its cost is bounded (one indexed lookup of at most
  `concurrency` ids a second, only while something runs) where a LISTEN would need a second
  path for poolers and a poll after every reconnect anyway;
- the delivery's `CancelFlag` is set: `ctx.cancelled` is True, `ctx.raise_if_cancelled()` and any
  `ctx.step` about to start raise `JobCancelled`;
- an `async def` handler's task is cancelled after `cancel_grace` (CancelledError at its next
  await, which it may catch to clean up), and again each grace while it still runs; a `def`
  handler's thread cannot be stopped: it sees the flag and returns or raises when it looks;
- whatever the attempt then came to, it settles as `Cancelled` (message deleted, job
  `cancelled`, never retried), unless its lease was lost (the next reader sees the mark, see
  `Message.cancel_requested`); after a cancelled parent's settle its fan-outs close and its
  unfinished children are cancelled too (a Settle observer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from queues.cancel import acancel_unfinished_children
from worker.outcome import Abandoned, Cancelled, Outcome
from worker.store import cancels as store
from worker.store.deliveries import Message
from worker.trouble import TRANSIENT

log = get_logger()


class JobCancelled(BaseException):
    """The job was cancelled: raised by `ctx.raise_if_cancelled()` and by a `ctx.step` about to start.

    A BaseException, as asyncio's CancelledError, so a handler's `except Exception` cannot swallow it.
    """


class CancelFlag:
    """Set once the worker has noticed that the delivery's job was cancelled; read from any thread.

    A plain attribute, not a threading.Event: nothing waits on it (handlers look), a store of a
    bool is atomic, and an Event (a Condition and a Lock) for every delivery was measurable.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Mark the job cancelled."""
        self._set = True

    def is_set(self) -> bool:
        """True once the job was cancelled."""
        return self._set

    def raise_if_set(self, what: str = "the job") -> None:
        """JobCancelled if the job was cancelled."""
        if self._set:
            raise JobCancelled(f"{what}: the job was cancelled")


@dataclass(slots=True)
class _Held:
    message: Message
    flag: CancelFlag
    task: asyncio.Task[Any] | None  # cancelled after the grace; None: a `def` handler (a thread)
    timer: asyncio.TimerHandle | None = None


class Cancels:
    """The deliveries in flight that a cancel may reach, the poll that finds them, and the stop."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        interval_s: float,
        grace_s: float,
        watch: Callable[[asyncio.Task[Any]], object],
    ) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._grace_s = grace_s
        self._watch = watch  # SideTasks.watch: a children's cancel must not die unseen
        self._held: dict[UUID, _Held] = {}

    @contextlib.contextmanager
    def watch(self, message: Message, *, is_async: bool) -> Iterator[CancelFlag]:
        """Within the block, a cancel of the delivery's job sets the flag (and stops an async handler)."""
        flag = CancelFlag()
        if message.job_id is None:  # no job row: nothing can cancel it
            yield flag
            return
        held = _Held(message, flag, asyncio.current_task() if is_async else None)
        self._held[message.job_id] = held
        try:
            yield flag
        finally:
            if self._held.get(message.job_id) is held:
                del self._held[message.job_id]
            if held.timer is not None:
                held.timer.cancel()

    async def run(self, stopping: asyncio.Event) -> None:
        """Look for cancels of held jobs every interval until stopped (a side task)."""
        while not stopping.is_set():
            try:
                await self.check()
            except (*TRANSIENT, psycopg.Error) as exc:  # the next round asks again
                log.warning("cancels.check_failed", error=one_line(exc))
            await sleep_or_stop(stopping, self._interval_s)

    async def check(self) -> None:
        """One look: set the flag of every held job someone cancelled."""
        ids = [job_id for job_id, held in self._held.items() if not held.flag.is_set()]
        if not ids:
            return
        async with self._pool.connection(timeout=5) as conn:
            found = await store.requested(conn, ids)
        for job_id in found:
            self._notice(job_id)

    def _notice(self, job_id: UUID) -> None:
        held = self._held.get(job_id)
        if held is None or held.flag.is_set():
            return
        held.flag.set()
        m = held.message
        log.info("job.cancel_noticed", queue=m.queue, msg_id=m.msg_id, job_id=str(job_id))
        if held.task is not None:
            held.timer = asyncio.get_running_loop().call_later(self._grace_s, self._stop, job_id)

    def _stop(self, job_id: UUID) -> None:
        """Cancel the handler's task; again after another grace if it is still held (it swallowed it)."""
        held = self._held.get(job_id)
        if held is None or held.task is None or held.task.done():
            return
        held.task.cancel()
        held.timer = asyncio.get_running_loop().call_later(self._grace_s, self._stop, job_id)

    @staticmethod
    def outcome(flag: CancelFlag, outcome: Outcome) -> Outcome:
        """What a delivery whose job was cancelled settles as: Cancelled, whatever the attempt came to.

        Not a lost lease: another worker holds the delivery now (and its read saw the mark).
        """
        if not flag.is_set() or isinstance(outcome, Cancelled):
            return outcome
        if isinstance(outcome, Abandoned) and outcome.why == "lease_lost":
            return outcome
        return Cancelled.of("requested")

    def settled(self, message: Message, outcome: Outcome, _duration_ms: float) -> None:
        """Settle observer: after a cancelled job's settle, its fan-outs close and its children go too."""
        if isinstance(outcome, Cancelled) and message.job_id is not None:
            self._watch(asyncio.create_task(self._cancel_children(message.job_id), name="cancel-children"))

    async def _cancel_children(self, parent: UUID) -> None:
        try:
            async with self._pool.connection(timeout=5) as conn:
                await store.close_fan_outs(conn, parent)
                count = await acancel_unfinished_children(conn, parent)
        except Exception as exc:  # the children run on and end on their own; the parent is cancelled
            log.warning("job.cancel_children_failed", job_id=str(parent), error=one_line(exc))
            return
        if count:
            log.info("job.children_cancelled", job_id=str(parent), children=count)
