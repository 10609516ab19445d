"""Wake-up: LISTEN for pgmq's insert notifications where we can, always backed by polling.

Notifications can be missed (the listening connection drops, or a client inserts while we reconnect), so
they only shorten the wait; the poll interval bounds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from db.connect import Target
from db.listen import listen
from queues.names import table_name

__all__ = ["Wakeup", "channel"]


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

        def connected(up: bool) -> None:
            self.listening = up
            if up:
                self.notify()  # anything sent while we were not listening

        try:
            await listen(
                target,
                [channel(q) for q in queues],
                on_notify=lambda _channel, _payload: self.notify(),
                on_connect=connected,
                stopping=stopping,
                reconnect_max=reconnect_max,
            )
        finally:
            self.listening = False
