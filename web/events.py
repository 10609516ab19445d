"""Job change notifications for SSE streams: one LISTEN connection per web process.

A stream registers its job in `pgmq_worker.job_watchers` (under this process's listener id);
the jobs table's trigger (migration 0006) NOTIFYs `pgmq_worker_jobs` with the ids of watched
jobs that a statement changed. Every web instance behind a load balancer listens, so a stream on
any instance sees a change made by any worker, and jobs nobody streams cost the worker no NOTIFY.
A stream re-reads its row when woken, so a burst of notifications costs one read, and also on a
timer: the safety net while the listener reconnects, and the only path behind a transaction
pooler (no LISTEN, and no watches).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from db.connect import Target
from db.durations import Seconds
from db.errors import one_line
from db.listen import listen, sleep_or_stop
from db.logs import get_logger
from queues.jobs import JOB_CHANNEL, renew_watches, unwatch, unwatch_all, watch

log = get_logger()
WATCH_TTL_S = 120.0  # a crashed process's watches expire after this; live ones are renewed at a quarter


class JobEvents:
    """Wakes the streams that follow a job when its row changes."""

    def __init__(
        self, target: Target, pool: AsyncConnectionPool, *, reconnect_max: Seconds = timedelta(seconds=30)
    ) -> None:
        self.target = target
        self.pool = pool
        self.reconnect_max = reconnect_max
        self.listener_id = uuid.uuid4().hex
        self.listening = False
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._watched: set[str] = set()
        self._watch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening and renewing watches (where the connection path allows LISTEN)."""
        if self.target.allows_listen and not self._tasks:
            self._stopping.clear()
            self._tasks = [
                asyncio.create_task(self._listen(), name="job-events"),
                asyncio.create_task(self._renew(), name="job-watches"),
            ]

    async def stop(self) -> None:
        """Stop listening, drop this process's watches and wake every stream so it can finish."""
        self._stopping.set()
        for task in [*self._tasks, *self._cleanups]:
            await task
        if self._tasks:
            try:
                async with self.pool.connection(timeout=5) as conn:
                    await unwatch_all(conn, self.listener_id)
            except Exception as exc:  # they expire on their own
                log.warning("job_events.unwatch_failed", error=one_line(exc))
        self._tasks = []
        self._wake_all()

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: UUID) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the job's row may have changed; read the row only after entering."""
        key = str(job_id)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            if self.target.allows_listen:
                async with self._watch_lock:
                    if key not in self._watched:
                        async with self.pool.connection() as conn:
                            await watch(conn, job_id, self.listener_id, WATCH_TTL_S)
                        self._watched.add(key)
            yield event
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]
            # In a task of its own: a stream ends by cancellation (the client left), and the
            # server's cancel scope would cancel any await made here too.
            cleanup = asyncio.create_task(self._unwatch_if_unused(job_id))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)

    async def _unwatch_if_unused(self, job_id: UUID) -> None:
        key = str(job_id)
        try:
            async with self._watch_lock:
                if key in self._watched and key not in self._waiters:
                    self._watched.discard(key)
                    async with self.pool.connection(timeout=5) as conn:
                        await unwatch(conn, job_id, self.listener_id)
        except Exception as exc:  # the watch expires on its own; only costs a few notifications
            log.warning("job_events.unwatch_failed", job_id=key, error=one_line(exc))

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

    async def _renew(self) -> None:
        while not self._stopping.is_set():
            await sleep_or_stop(self._stopping, WATCH_TTL_S / 4)
            if self._stopping.is_set():
                return
            try:
                async with self.pool.connection(timeout=5) as conn:
                    await renew_watches(conn, self.listener_id, WATCH_TTL_S)
            except Exception as exc:  # the database is away; the next round tries again
                log.warning("job_events.renew_failed", error=one_line(exc))
