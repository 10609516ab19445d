"""The worker's pruner: keeps `pgmq_worker.jobs` and pgmq's archives bounded, one worker at a time.

Every `retention_interval` a worker tries to take the fleet's pruning lease (a row, migration
0020: advisory locks do not survive a transaction-mode pooler); the holder renews it at each pass,
so one worker keeps pruning while it lives and another takes over within two intervals once it
is gone. A pass deletes finished job rows and archived messages older than `retention`, queue by
queue, in batches of `retention_batch` rows, each its own short statement on a connection taken
from the pool for that batch alone, so it never holds locks or a connection for long. Database
trouble is logged and waited out until the next pass: pruning can always wait.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from queues import retention
from queues.retention import Pruned
from worker.settings import WorkerSettings
from worker.trouble import TRANSIENT

log = get_logger()


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished rows are kept, and how the pruner goes about deleting them."""

    keep: timedelta
    interval: timedelta
    batch: int


def retention_policy(settings: WorkerSettings) -> RetentionPolicy | None:
    """The settings' policy; None when `retention` is 0 (keep everything)."""
    if settings.retention <= timedelta(0):
        return None
    return RetentionPolicy(settings.retention, settings.retention_interval, settings.retention_batch)


class Pruner:
    """A side task: every interval, if this worker holds the lease, delete what is past retention."""

    @classmethod
    def when_kept(cls, pool: AsyncConnectionPool, settings: WorkerSettings) -> Pruner | None:
        """The worker's pruner; None when `retention` is 0 (keep everything)."""
        policy = retention_policy(settings)
        return None if policy is None else cls(pool, policy)

    def __init__(self, pool: AsyncConnectionPool, policy: RetentionPolicy) -> None:
        self._pool = pool
        self._policy = policy
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.passes = 0  # passes this worker ran (tests, the dashboard's numbers)

    async def run(self, stopping: asyncio.Event) -> None:
        """Prune every interval until the worker stops; nothing it meets ends it."""
        interval_s = self._policy.interval.total_seconds()
        try:
            while not stopping.is_set():
                try:
                    await self.once(stopping)
                except TRANSIENT as exc:
                    log.warning("retention.database_unavailable", error=one_line(exc), retry_in_s=interval_s)
                except Exception as exc:  # a refused statement (migration 0020 missing, grants): next pass
                    log.exception("retention.failed", error=one_line(exc), retry_in_s=interval_s)
                await sleep_or_stop(stopping, interval_s)
        finally:  # also when cancelled at the worker's stop: the pool closes after its side tasks
            await self._release()

    async def _release(self) -> None:
        if not self.passes:
            return  # never held it (or never got as far as a pass)
        try:
            async with self._pool.connection(timeout=2) as conn:
                await retention.arelease(conn, self.holder)
        except Exception as exc:  # best effort: the lease expires on its own
            log.info("retention.release_failed", error=one_line(exc))

    async def once(self, stopping: asyncio.Event | None = None) -> list[Pruned] | None:
        """One pass if this worker holds (or takes) the lease; None when another worker prunes."""
        ttl = self._policy.interval * 2
        async with self._pool.connection() as conn:
            if not await retention.aclaim(conn, self.holder, ttl):
                return None
            cutoff = await retention.acutoff(conn, self._policy.keep)
            names = await retention.aqueues(conn)
        started = time.perf_counter()
        pruned = []
        for name in names:
            jobs = await self._drain(retention.aprune_jobs, name, cutoff, stopping)
            archived = await self._drain(retention.aprune_archive, name, cutoff, stopping)
            if jobs or archived:
                pruned.append(Pruned(name, jobs, archived))
                log.info("retention.pruned", queue=name, jobs=jobs, archived=archived)
        async with self._pool.connection() as conn:
            await retention.apruned(conn, self.holder)
        self.passes += 1
        log.debug(
            "retention.pass", queues=len(names), duration_ms=round((time.perf_counter() - started) * 1000)
        )
        return pruned

    async def _drain(
        self, step: retention.BatchStep, queue: str, cutoff: datetime, stopping: asyncio.Event | None
    ) -> int:
        """Run one kind of batch until it deletes nothing (or the worker stops)."""
        total = 0
        while stopping is None or not stopping.is_set():
            async with self._pool.connection() as conn:  # per batch: the read loop shares the pool
                n = await step(conn, queue, cutoff, self._policy.batch)
            total += n
            if n < self._policy.batch:
                break
            await asyncio.sleep(0)  # let deliveries settle between batches
        return total
