"""Running marks: a job row says `running` once its delivery has run a moment, not at the read.

The read writes nothing to the job row (worker/store/deliveries.py, READ): a no-op or quick job
then writes one row version fewer (`queued` -> its outcome; a message sent with plain pgmq.send
gets its only row at the settle), which under a long-held snapshot is a third to a half of the
jobs table's growth. A delivery still running after `after_s` gets its `running` row here, in
one statement per queue for all that are due; one that reports progress, runs a step, stores an
artifact or fans out gets it at once, before that write (`RunningMark.ensure`), since those rows
hang off the job row. Every write is fenced (MARK_RUNNING): nothing is written for a delivery
already settled or read again, so a mark racing the settle leaves the outcome standing.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from worker.store import deliveries
from worker.store.deliveries import Message
from worker.trouble import TRANSIENT

log = get_logger()


class RunningMark:
    """One delivery's mark: whether its job row says `running` yet, and the way to make it so now.

    A context manager (RunningMarks.held): in flight, and so marked when due, within the block.
    """

    __slots__ = ("_key", "_marks", "message", "since", "written")

    def __init__(self, marks: RunningMarks, message: Message) -> None:
        self._marks = marks
        self.message = message
        self._key = (message.queue, message.msg_id)
        self.since = 0.0
        self.written = False

    def __enter__(self) -> RunningMark:
        if self.message.job_id is not None:  # no job row: nothing to mark
            self.since = time.monotonic()
            self._marks._held[self._key] = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self._marks._held.get(self._key) is self:
            del self._marks._held[self._key]

    async def ensure(self) -> None:
        """Make the job row say `running` now, unless it already does (database errors raise)."""
        if self.written or self.message.job_id is None:
            return
        async with self._marks.pool.connection(timeout=5) as conn:
            await deliveries.mark_running(conn, self.message.queue, [self.message])
        self.written = True


class RunningMarks:
    """The deliveries in flight with job rows, and the side task that marks those due."""

    def __init__(self, pool: AsyncConnectionPool, after_s: float) -> None:
        self.pool = pool
        self.after_s = after_s
        self._held: dict[tuple[str, int], RunningMark] = {}  # in the order they started

    def held(self, message: Message) -> RunningMark:
        """The delivery's mark: `with` it for the attempt, up to its settle (a class, not a
        generator context manager: this is once per delivery on the hot path)."""
        return RunningMark(self, message)

    async def run(self, stopping: asyncio.Event) -> None:
        """Mark what is due every half `after_s` until stopped (a side task)."""
        while not stopping.is_set():
            await self.mark_due()
            await sleep_or_stop(stopping, self.after_s / 2)

    async def mark_due(self) -> None:
        """One round: mark, per queue in one statement, every delivery that has run `after_s`."""
        cutoff = time.monotonic() - self.after_s
        due: dict[str, list[RunningMark]] = {}
        for mark in self._held.values():
            if mark.since > cutoff:
                break  # the rest started later
            if not mark.written:  # only deliveries with a job row are held
                due.setdefault(mark.message.queue, []).append(mark)
        for queue, marks in due.items():
            try:
                async with self.pool.connection(timeout=5) as conn:
                    await deliveries.mark_running(conn, queue, [m.message for m in marks])
            except (*TRANSIENT, psycopg.Error) as exc:  # the settle writes the outcome all the same
                log.warning("job.running_not_marked", queue=queue, jobs=len(marks), error=one_line(exc))
                if isinstance(exc, TRANSIENT):
                    continue  # the next round tries again
            for mark in marks:
                mark.written = True
