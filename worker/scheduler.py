"""The scheduler: a side task of every worker that serves a scheduled queue, sending each tick once.

Every worker takes part and the database decides (worker.store.ticks.claim): each one walks the
ticks of its schedules and tries to claim every one; the first transaction to insert a tick's row
sends its message, the others find the key taken. So a tick runs once however many workers run,
whichever of them is killed, and while old and new machines overlap in a deploy. The key is the
tick the cron expression gives, not the clock: a worker whose clock is a little behind claims
the same tick a little later (and finds it taken), one a little ahead sends it that much early.

Each schedule keeps a cursor here: the last tick this worker has dealt with. A pass takes the
ticks in (cursor, now]. The first pass starts from the newest tick in the database (none yet:
from now, so a new schedule never runs a tick from before it existed), and so does the policy:
the ticks it finds were missed while no worker ran, and `catch_up` picks which to send. Later
passes send every tick due, unless the worker itself woke more than LATE after one (suspended,
starved, the database away): then it starts again from the database's newest tick, and the
ticks after it count as missed too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.backoff import reconnect_delay
from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from worker.schedules import LATE, Schedule
from worker.store import ticks
from worker.trouble import TRANSIENT

log = get_logger()

KEEP_TICKS = timedelta(days=1)  # tick rows older than this are pruned (the newest always stays)
PRUNE_EVERY = timedelta(minutes=10)
MAX_SLEEP_S = 60.0  # wake at least this often: a wall-clock step (NTP) is seen within a minute
WAKE_AFTER_S = 0.002  # sleep just past the tick: a pass at tick - 1 ms would find nothing due


@dataclass(slots=True)
class _Cursor:
    """Where one schedule is in this worker: the last tick dealt with; None before the first pass."""

    last: datetime | None = None


class Scheduler:
    """Sends the ticks of the schedules whose queues this worker serves (see the module)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        schedules: Sequence[Schedule],
        keeps_job_rows: Callable[[str], bool],
        *,
        reconnect_max_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._schedules = list(schedules)
        self._keeps_job_rows = keeps_job_rows
        self._reconnect_max_s = reconnect_max_s
        self._clock = clock
        self._cursors = {s.name: _Cursor() for s in self._schedules}
        self._pruned_at: datetime | None = None
        self.sent = 0  # ticks this worker sent (the others were taken by other workers)

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping`: a pass over every schedule, then sleep until the next tick of any."""
        failures = 0
        declared = False
        while not stopping.is_set():
            try:
                if not declared:
                    await self._declare()
                    declared = True
                await self.tick_all()
                await self._prune_if_due()
                failures = 0
            except (*TRANSIENT, psycopg.Error) as exc:  # the ticks wait in (cursor, now] meanwhile
                failures += 1
                await sleep_or_stop(stopping, self._failed(exc, failures))
                continue
            await sleep_or_stop(stopping, self._sleep_s())

    def _failed(self, exc: BaseException, failures: int) -> float:
        """Log a failed pass; how long to wait before the next (the worker runs on either way)."""
        delay = reconnect_delay(failures, self._reconnect_max_s)
        fields = {"error": one_line(exc), "retry_in_s": round(delay, 2)}
        if isinstance(exc, TRANSIENT):  # the database is away
            log.warning("scheduler.database_unavailable", **fields)
        else:  # a statement's own problem (a missing grant, say): loud, one line, no traceback
            log.error("scheduler.failed", **fields)
        return delay

    async def tick_all(self) -> None:
        """One pass: for each schedule, claim the ticks due now (after its catch-up policy)."""
        for declared in self._schedules:
            await self._pass(declared, self._clock())

    async def _pass(self, declared: Schedule, now: datetime) -> None:
        cursor = self._cursors[declared.name]
        resumed = cursor.last is None or now - declared.next_tick(cursor.last) > LATE
        if resumed:
            # From the newest tick any worker sent, never from before it: the ticks up to it were
            # dealt with, and those over a day old are pruned, so a walk there could send one again.
            async with self._pool.connection() as conn:
                found = await ticks.last_tick(conn, declared.name)
            known = [t for t in (cursor.last, found) if t is not None]
            cursor.last = max(known) if known else now
        after = cursor.last
        assert after is not None  # noqa: S101  set just above on the first pass
        if declared.next_tick(after) > now:
            return
        plan = declared.plan(after, now, resumed=resumed)
        if plan.cursor > after and not plan.send:
            log.info(
                "schedule.ticks_skipped",
                schedule=declared.name,
                until=plan.cursor.isoformat(),
                catch_up=str(declared.catch_up),
            )
        job_rows = self._keeps_job_rows(declared.queue)
        for tick in plan.send:
            await self._claim(declared, tick, job_rows=job_rows)
            cursor.last = after = tick  # dealt with: sent here or by another worker
        cursor.last = max(after, plan.cursor)

    async def _claim(self, declared: Schedule, tick: datetime, *, job_rows: bool) -> None:
        try:
            async with self._pool.connection() as conn:
                msg_id = await ticks.claim(conn, declared, tick, job_rows=job_rows)
        except LookupError as exc:  # UnknownQueue too: the queue was dropped; the next tick tries again
            log.error(  # noqa: TRY400  (one line: a missing queue needs no traceback)
                "schedule.send_failed", schedule=declared.name, tick=tick.isoformat(), error=str(exc)
            )
            return
        if msg_id is not None:
            self.sent += 1
            log.info(
                "schedule.sent",
                schedule=declared.name,
                queue=declared.queue,
                tick=tick.isoformat(),
                msg_id=msg_id,
            )

    def _sleep_s(self) -> float:
        """Seconds until the earliest next tick of any schedule (at most MAX_SLEEP_S)."""
        now = self._clock()
        nearest = min(
            (s.next_tick(self._cursors[s.name].last or now) for s in self._schedules),
            default=now + timedelta(seconds=MAX_SLEEP_S),
        )
        return min(MAX_SLEEP_S, max(0.0, (nearest - now).total_seconds()) + WAKE_AFTER_S)

    async def _declare(self) -> None:
        async with self._pool.connection() as conn:
            for declared in self._schedules:
                await ticks.declare(conn, declared)

    async def _prune_if_due(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        async with self._pool.connection() as conn:
            for declared in self._schedules:
                await ticks.prune(conn, declared.name, now - KEEP_TICKS)


def schedules_for(schedules: Sequence[Schedule], queues: Sequence[str]) -> list[Schedule]:
    """The schedules whose queue this worker serves (`--queue` may leave some to other workers)."""
    served = set(queues)
    return [s for s in schedules if s.queue in served]
