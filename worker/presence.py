"""Presence: this worker's row in the registry (pgmq_worker.workers), kept current by a heartbeat.

A side task upserts the row every `registry_heartbeat` with what changes (status, in flight from
`Slots`, the counts the settle's observer keeps), and writes `draining` at once when the stop
starts; it keeps beating through the drain, and the worker deletes the row once it has stopped.
The same heartbeat deletes rows of workers gone long ago (any worker's; queues.workers says when).

The registry is for people and dashboards: the worker never waits for it. A heartbeat that fails
(the database is away, the role may not write the table) is logged once, tried again at the next
interval, and never stops the worker.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from worker.outcome import Outcome
from worker.settings import WorkerSettings
from worker.settle import Settle
from worker.store import presence
from worker.store.deliveries import Message
from worker.store.presence import Card, Tally
from worker.trouble import TRANSIENT

log = get_logger()

COUNTED = frozenset({"succeeded", "failed", "dead"})  # job statuses of an attempt's end
FAILED = frozenset({"failed", "dead"})
CONNECT_TIMEOUT_S = 5.0  # a heartbeat (or the last delete) waits this long for a connection


def package_version() -> str:
    """pgmq-worker's installed version (`unknown` when run from a source tree that is not installed)."""
    try:
        return version("pgmq-worker")
    except PackageNotFoundError:
        return "unknown"


def card_for(queues: Sequence[str], settings: WorkerSettings) -> Card:
    """This process's card: a new id (host:pid:random), where it runs, what it serves."""
    host = socket.gethostname()
    pid = os.getpid()
    return Card(
        id=f"{host}:{pid}:{uuid.uuid4().hex[:8]}",
        host=host,
        pid=pid,
        machine_id=settings.fly_machine_id,
        region=settings.fly_region,
        version=package_version(),
        queues=tuple(queues),
        concurrency=settings.concurrency,
        heartbeat=settings.registry_heartbeat,
        started_at=datetime.now(UTC),
    )


class Presence:
    """This worker's registry row: the tallies it shows, the heartbeat that writes it, its removal."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        card: Card,
        in_flight: Callable[[], int],
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.pool = pool
        self._connect_timeout_s = connect_timeout_s
        self.card = card
        self._in_flight = in_flight
        self.processed = 0
        self.failed = 0
        self.draining = False
        self._failing = False  # the last heartbeat failed: logged once until one works again

    def observe(self, settle: Settle) -> None:
        """Count what the settle writes."""
        settle.observe(self.settled)

    def settled(self, message: Message, outcome: Outcome, duration_ms: float) -> None:
        """Settle's observer: count an attempt that ended (succeeded, failed or dead-lettered)."""
        status = outcome.status
        if status in COUNTED:
            self.processed += 1
            if status in FAILED:
                self.failed += 1

    def tally(self) -> Tally:
        """What the next heartbeat writes."""
        return Tally(
            status="draining" if self.draining else "running",
            in_flight=self._in_flight(),
            processed=self.processed,
            failed=self.failed,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """The side task: a heartbeat now, at every interval, and at once when the stop starts."""
        every = self.card.heartbeat.total_seconds()
        while True:
            self.draining = stopping.is_set()
            await self.beat()
            if self.draining:
                await asyncio.sleep(every)  # beating through the drain, until the worker stops us
            else:
                await sleep_or_stop(stopping, every)

    async def beat(self) -> None:
        """Write the row; database trouble is logged, not raised."""
        try:
            async with self.pool.connection(timeout=self._connect_timeout_s) as conn:
                await presence.beat(conn, self.card, self.tally())
        except (*TRANSIENT, psycopg.Error) as exc:
            if not self._failing:
                log.warning("registry.heartbeat_failed", error=one_line(exc), note="tried each interval")
            self._failing = True
            return
        if self._failing:
            log.info("registry.heartbeat_resumed")
        self._failing = False

    async def withdraw(self) -> None:
        """The worker stopped: delete its row (best effort: else it goes stale, and is removed later)."""
        try:
            async with self.pool.connection(timeout=self._connect_timeout_s) as conn:
                await presence.withdraw(conn, self.card.id)
        except (*TRANSIENT, psycopg.Error) as exc:
            log.warning("registry.withdraw_failed", error=one_line(exc), note="the row goes stale")
