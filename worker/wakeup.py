"""Wake-up: LISTEN for pgmq's insert notifications where we can, always backed by polling.

Notifications can be missed (the listening connection drops, or a client inserts while we reconnect), so
they only shorten the wait; the poll interval bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import psycopg
from psycopg import sql

from db.connect import Target, aconnect
from db.errors import DatabaseUnavailable
from queues.names import table_name
from worker.backoff import reconnect_delay
from worker.logs import get_logger

log = get_logger()


def channel(queue: str) -> str:
    """The channel pgmq's notify_queue_listeners trigger sends on for a queue's inserts."""
    return f"pgmq.{table_name(queue)}.INSERT"


class Wakeup:
    """An event set by notifications (when listening) and waited on with the poll interval."""

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._event = asyncio.Event()
        self.listening = False

    def notify(self) -> None:
        """Something may be new: wake the read loop."""
        self._event.set()

    async def wait(self, stopping: asyncio.Event) -> None:
        """Return on a notification, on stop, or after the poll interval, whichever first."""
        if self._event.is_set():
            self._event.clear()
            return
        waiters = {asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stopping.wait())}
        try:
            await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._event.clear()

    async def listen(
        self, target: Target, queues: Sequence[str], stopping: asyncio.Event, reconnect_max: float
    ) -> None:
        """Hold a LISTEN connection for the queues' insert channels, reconnecting with backoff."""
        failures = 0
        while not stopping.is_set():
            try:
                conn = await aconnect(target)
            except DatabaseUnavailable as exc:
                failures += 1
                log.warning("listener.reconnecting", error=str(exc), attempt=failures)
                await sleep_or_stop(stopping, reconnect_delay(failures, reconnect_max))
                continue
            try:
                async with conn:
                    for queue in queues:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(queue))))
                    failures = 0
                    self.listening = True
                    log.debug("listener.started", queues=list(queues))
                    self.notify()  # anything sent while we were not listening
                    await self._relay(conn, stopping)
            except (psycopg.Error, OSError) as exc:
                failures += 1
                log.warning("listener.lost", error=str(exc).strip()[:200], attempt=failures)
                await sleep_or_stop(stopping, reconnect_delay(failures, reconnect_max))
            finally:
                self.listening = False

    async def _relay(self, conn: psycopg.AsyncConnection[object], stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            # A bounded wait, so a stop is noticed and a dead connection surfaces as an error.
            async for _note in conn.notifies(timeout=1.0, stop_after=64):
                self.notify()
            await conn.execute("SELECT 1")


async def sleep_or_stop(stopping: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, returning early when `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
