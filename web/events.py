"""Job change notifications for SSE streams: one LISTEN connection per web process.

The jobs table's trigger (migration 0006) NOTIFYs `pgmq_worker_jobs` with the ids each
statement changed; every web instance behind a load balancer listens, so a stream on any
instance sees a change made by any worker. A stream re-reads its row when woken, so a burst of
notifications costs one read, and it also re-reads on a timer: the safety net while the
listener reconnects, and the only path behind a transaction pooler (no LISTEN).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from db.connect import Target
from db.listen import listen
from db.logs import get_logger
from queues.jobs import JOB_CHANNEL

log = get_logger()


class JobEvents:
    """Wakes the streams that follow a job when its row changes."""

    def __init__(self, target: Target, *, reconnect_max: float = 30.0) -> None:
        self.target = target
        self.reconnect_max = reconnect_max
        self.listening = False
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening (where the connection path allows LISTEN)."""
        if self.target.allows_listen and self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._listen(), name="job-events")

    async def stop(self) -> None:
        """Stop listening and wake every stream so it can finish."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._wake_all()

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job's row may have changed; subscribe before the first read."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    @property
    def streams(self) -> int:
        """How many streams are following a job now."""
        return sum(len(w) for w in self._waiters.values())

    def _on_notify(self, _channel: str, payload: str) -> None:
        for job_id in payload.split(","):
            for event in self._waiters.get(job_id, ()):
                event.set()

    def _on_connect(self, up: bool) -> None:
        self.listening = up
        if up:
            self._wake_all()  # changes made while we were not listening

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _listen(self) -> None:
        try:
            await listen(
                self.target,
                [JOB_CHANNEL],
                on_notify=self._on_notify,
                on_connect=self._on_connect,
                stopping=self._stopping,
                reconnect_max=self.reconnect_max,
            )
        finally:
            self.listening = False
