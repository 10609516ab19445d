"""Pauses: which of this worker's queues are paused, kept in memory so that a read pays nothing for it.

`queues.pause` writes a row in `pgmq_worker.queue_pauses` (migration 0025). This part holds the
set of the worker's own queues that have one, and the reading order skips them
(worker/reading_order.py: a set lookup per queue per read, no statement). The set is read:

- as the worker starts, before its first read: a queue paused then is never read;
- at once when the listener hears `pgmq_worker.queue_pauses` (the table's trigger notifies at
  the commit of every change) or (re)connects (it may have missed one while it was down);
- every poll interval besides (`PGMQ_WORKER_POLL_INTERVAL`, 1 s by default), which converges a
  worker that cannot LISTEN (behind a transaction pooler) or that missed a notification.

So a pause holds at every worker within one poll interval of its commit (plus a read already
under way), at once where workers listen. A resume wakes the read loop, which reads the queue at
once. Deliveries a worker already holds run to their end and settle as usual. While the database
does not answer, the last set read holds (`pauses.check_failed`, and the next round asks again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.logs import get_logger
from queues.pauses import CHANNEL, Pause, apaused
from worker.trouble import TRANSIENT

__all__ = ["CHANNEL", "Pauses"]

log = get_logger()


class Pauses:
    """The paused ones among a worker's queues: read at start, on each notification, every interval."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        queues: Iterable[str],
        *,
        interval_s: float,
        on_resumed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._queues = frozenset(queues)
        self._interval_s = interval_s
        self._on_resumed = on_resumed  # Wakeup.notify: read the resumed queue now, not after a poll
        self._changed = asyncio.Event()
        self.paused: frozenset[str] = frozenset()

    def unpaused(self, queues: Iterable[str]) -> list[str]:
        """Those of `queues` that are not paused (what a burst worker waits to see empty)."""
        return [queue for queue in queues if queue not in self.paused]

    def changed(self) -> None:
        """A pause or resume was committed somewhere (or the listener reconnected): read them again now."""
        self._changed.set()

    async def refresh(self) -> None:
        """Read the paused set (the worker awaits the first one before it reads any queue)."""
        async with self._pool.connection(timeout=5) as conn:
            found = await apaused(conn)
        self._apply({queue: p for queue, p in found.items() if queue in self._queues})

    async def run(self, stopping: asyncio.Event) -> None:
        """Read the pauses on each change and every interval until stopped (a side task)."""
        while not stopping.is_set():
            await self._wait(stopping)
            if stopping.is_set():
                return
            try:
                await self.refresh()
            except (*TRANSIENT, psycopg.Error) as exc:  # the set read last holds; the next round asks again
                log.warning("pauses.check_failed", error=one_line(exc))

    async def _wait(self, stopping: asyncio.Event) -> None:
        """Until a change is heard, the interval ends, or a stop; the change is taken (cleared) here,
        before the read, so one committed during the read is not missed."""
        waits = {asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stopping.wait())}
        try:
            await asyncio.wait(waits, timeout=self._interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._changed.clear()

    def _apply(self, found: Mapping[str, Pause]) -> None:
        now = frozenset(found)
        for queue in sorted(now - self.paused):
            pause = found[queue]
            log.info("queue.pause_noticed", queue=queue, paused_by=pause.paused_by, reason=pause.reason)
        resumed = self.paused - now
        for queue in sorted(resumed):
            log.info("queue.resume_noticed", queue=queue)
        self.paused = now
        if resumed:
            self._on_resumed()
