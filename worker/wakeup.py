"""Wake-up: LISTEN for pgmq's insert notifications where we can, always backed by polling.

Notifications can be missed (the listening connection drops, or a client inserts while we reconnect), so
they only shorten the wait; the poll interval bounds it.

Inserts notify only while some worker has announced that it waits (migration 0013): before an
idle wait a listening worker announces itself, reads once more (a message sent just before the
announcement committed did not notify), then waits; the announcement lasts a few poll intervals
and is renewed while the worker stays idle.

Polling backs off: after a read that found work the next look comes REPOLL_S later, and each read
that finds nothing doubles the wait up to the poll interval. Under steady traffic a worker that
cannot LISTEN (behind a transaction pooler) then picks messages up within tens of milliseconds,
not half a poll interval, while an idle one still reads once per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.connect import Target
from db.errors import one_line
from db.listen import listen
from db.logs import get_logger
from queues.names import table_name
from worker.pauses import CHANNEL as PAUSES
from worker.pauses import Pauses
from worker.store import waiters
from worker.trouble import TRANSIENT, DatabaseTrouble

__all__ = ["BURST_WAIT_S", "REPOLL_S", "Announcements", "Wakeup", "channel"]

log = get_logger()

REPOLL_S = 0.02  # the first wait after a read that found work
# Burst mode's poll interval: an idle burst worker waits only while its queues still hold
# messages it cannot read yet, held by another worker (whose ack, a delete, notifies no one) or
# delayed. It exits this soon after the last one is gone, not up to a poll interval later.
BURST_WAIT_S = 0.1


def channel(queue: str) -> str:
    """The channel pgmq's notify_queue_listeners trigger sends on for a queue's inserts."""
    return f"pgmq.{table_name(queue)}.INSERT"


class Wakeup:
    """Waits that notifications (when listening) or a stop end early, bounded by the poll interval."""

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._pending = False  # a notification came while nobody waited: the next wait returns at once
        self._waiter: asyncio.Future[None] | None = None  # the wait in progress
        self._stop_watch: asyncio.Future[Any] | None = None  # ends every wait once stopping is set
        self._backoff = poll_interval
        self._announced_until = 0.0  # monotonic: until when the database knows we wait
        self.listening = False

    @property
    def announce_ttl(self) -> float:
        """How long one announcement of waiting lasts in the database (migration 0013)."""
        return 3 * self.poll_interval + 1.0

    def announce_due(self) -> bool:
        """Listening, and our announcement is gone or would lapse within the next wait."""
        return self.listening and time.monotonic() + self.poll_interval + 0.5 >= self._announced_until

    def announced(self, at: float) -> None:
        """The announcement made at monotonic time `at` was committed."""
        self._announced_until = at + self.announce_ttl

    def next_wait(self, found: bool) -> float:
        """How long to wait before the next read, given whether the last one found work."""
        self._backoff = REPOLL_S if found else self._backoff * 2
        return min(self._backoff, self.poll_interval)

    def notify(self) -> None:
        """Something may be new: wake the read loop."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        else:
            self._pending = True

    async def wait(self, stopping: asyncio.Event, *, found: bool = False) -> None:
        """Return on a notification, on stop, or after the (backed-off) poll wait, whichever first.

        `found`: the read before this wait found messages (see next_wait). One future, resolved by
        whichever comes first: a notification reaches the read loop in one step of the event loop,
        not through an Event, two tasks and asyncio.wait (about 0.05 ms of an idle worker's pickup).
        """
        timeout = self.next_wait(found)
        if self._pending or stopping.is_set():
            self._pending = False
            return
        if self._stop_watch is None:  # one task for the worker's life, not one per wait
            watch = self._stop_watch = asyncio.ensure_future(stopping.wait())
            watch.add_done_callback(lambda _: self.notify())
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self.notify)  # the poll interval ends it like a notification
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._pending = False

    async def listen(
        self,
        target: Target,
        queues: Sequence[str],
        stopping: asyncio.Event,
        reconnect_max: float,
        pauses: Pauses,
    ) -> None:
        """Hold a LISTEN connection for the queues' insert channels and for pauses (worker/pauses.py),
        reconnecting with backoff. An insert into a paused queue wakes nobody."""
        queue_of = {channel(q): q for q in queues}

        def heard(name: str, _payload: str) -> None:
            if name == PAUSES:
                pauses.changed()
            elif queue_of.get(name) not in pauses.paused:
                self.notify()

        def connected(up: bool) -> None:
            self.listening = up
            self._announced_until = 0.0  # announce again before the next wait
            if up:
                self.notify()  # anything sent while we were not listening
                pauses.changed()  # and any pause or resume

        try:
            await listen(
                target,
                [*queue_of, PAUSES],
                on_notify=heard,
                on_connect=connected,
                stopping=stopping,
                reconnect_max=reconnect_max,
            )
        finally:
            self.listening = False


class Announcements:
    """This worker's rows in pgmq_worker.waiters: its queues' inserts notify while it waits."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        trouble: DatabaseTrouble,
        wakeup: Wakeup,
        queues: Callable[[], Sequence[str]],
    ) -> None:
        self._pool = pool
        self._trouble = trouble
        self._wakeup = wakeup
        self._queues = queues  # the queues waited on now: the worker's, less the paused ones
        self._announced: tuple[str, ...] | None = None  # what the last committed announcement named
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.enabled = False  # listening, and allowed to announce

    async def announce_if_due(self) -> bool:
        """Announce (or renew) before an idle wait; True once committed: read once more, then wait."""
        queues = tuple(self._queues())
        changed = queues != self._announced and self._wakeup.listening  # paused or resumed since
        if not (self.enabled and (changed or self._wakeup.announce_due())):
            return False
        at = time.monotonic()
        try:
            async with self._pool.connection(timeout=5) as conn:
                await waiters.announce_waiting(conn, self._worker_id, queues, self._wakeup.announce_ttl)
        except TRANSIENT as exc:
            await self._trouble.wait_out(exc)
            return False
        except psycopg.Error as exc:  # no privilege on pgmq_worker.waiters, say: inserts will not notify
            self.enabled = False
            log.warning("worker.notify_unavailable", reason=one_line(exc), note="polling")
            return False
        self._wakeup.announced(at)
        self._announced = queues
        return True

    async def withdraw(self) -> None:
        """Stopping: inserts need not notify on this worker's account any more (best effort)."""
        if not self.enabled:
            return
        with contextlib.suppress(*TRANSIENT, psycopg.Error):
            async with self._pool.connection(timeout=2) as conn:
                await waiters.withdraw_waiting(conn, self._worker_id)
