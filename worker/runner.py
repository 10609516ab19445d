"""The worker: read what the slots have room for, start each delivery, wait when idle, stop cleanly.

The parts it holds, each owning its state: `Slots` (what is in flight, the leases, the drain),
`ReadingOrder` (which queue a read asks first: priorities, rotation, the starvation guard),
`Attempts` (one delivery, top to bottom), `Settle` (the one way outcomes are written),
`DatabaseTrouble` (transient errors and the misconfigured pooler), `Stop` (warm and cold stops),
`Wakeup` and `Announcements` (notifications, the poll interval, this worker's waiter rows),
`Pauses` (which of its queues are paused: the reading order skips them),
`Cancels` (cancel requests for the jobs it holds), `RunningMarks` (job rows `running` once a
delivery has run a moment), `Presence` (this worker's row in the registry), `Scheduler` (the
ticks of its queues' schedules), `Pruner` (retention of finished rows) and `SideTasks`, which
supervises whatever runs beside the loop (those six, the lease heartbeat, the listener and the
ack flusher): one that dies stops the worker.
`_lifespan` makes and closes them all, in one `async with`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from psycopg_pool import AsyncConnectionPool

from db.connect import Target, async_pool, connect, transaction_pooler_evidence
from db.logs import get_logger
from db.pgmq_install import PgmqFeatures, detect
from db.settings import DatabaseSettings
from queues import pgmq
from worker.attempt import Attempts
from worker.cancels import Cancels
from worker.context import Runtime
from worker.errors import PoolerMisconfigured, SideTaskFailed, UnknownQueue
from worker.health import Monitoring
from worker.leases import Leases
from worker.loop import loop_name
from worker.pauses import Pauses
from worker.presence import Presence, card_for
from worker.reading_order import ReadingOrder
from worker.registry import Registry
from worker.retention import Pruner
from worker.running_marks import RunningMarks
from worker.scheduler import Scheduler, schedules_for
from worker.settings import WorkerSettings
from worker.settle import Settle
from worker.side_tasks import SideTasks
from worker.signals import Stop
from worker.slots import Slots
from worker.store import deliveries
from worker.store.deliveries import Message
from worker.store.read_marks import ReadMarks
from worker.threads import HandlerThreads
from worker.trouble import RETRIED, TRANSIENT, DatabaseTrouble
from worker.wakeup import BURST_WAIT_S, Announcements, Wakeup
from worker.webhook_records import job_webhooks
from worker.webhooks import Webhooks

log = get_logger()


class Worker:
    """One worker process: reads its queues with `concurrency` slots until told to stop."""

    def __init__(
        self,
        target: Target,
        registry: Registry,
        settings: WorkerSettings,
        db_settings: DatabaseSettings,
        *,
        queues: Sequence[str] = (),
        burst: bool = False,
    ) -> None:
        self.target = target
        self.registry = registry
        self.settings = settings
        self.db_settings = db_settings
        self.queues = list(queues) or registry.queues()
        self.burst = burst
        self.features: PgmqFeatures | None = None
        self.stops = Stop()
        self.pruner: Pruner | None = None  # made in _lifespan when retention is on
        # The last read took fewer than a queue may have offered (threads or the queue's own slots
        # busy): a slot that frees may start one before the next notification or poll.
        self._held_back = False
        self._notifying = False
        self._stamps: dict[str, bool] = {}  # which of our queue tables have last_read_at (pgmq 1.10+)
        self._marks = ReadMarks()  # where each queue's next read starts (worker/store/read_marks.py)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until a signal (or, in burst mode, until the queues are empty); then drain."""
        async with self._lifespan():
            slots = self.slots
            try:
                while not self.stops.stopping.is_set():
                    free = slots.free()
                    if free <= 0:
                        await slots.wait(self.stops.stopping)
                        continue
                    slots.freed.clear()  # a slot freed during the read wakes a capped wait below
                    messages = await self._fetch(wanted := slots.to_read())
                    for message in messages:
                        self.attempts.start(message)
                    if len(messages) >= wanted:
                        continue  # there may be more right now
                    if self.burst and slots.unsettled():  # the next settle may be the last: look again then
                        await slots.wait(self.stops.stopping)
                        continue
                    if self.burst and await self._queues_empty():
                        log.info("worker.burst_done")
                        break
                    await self._idle(found=bool(messages))
            except BaseException:
                self.stops.cold.set()  # the loop itself failed: give back what we hold, now
                raise
            finally:
                await slots.drain(self.settings.shutdown_grace.total_seconds(), self.stops.cold)
        if self.stops.fatal is not None:
            raise self.stops.fatal

    def stop(self, *, cold: bool = False) -> None:
        """Ask the worker to stop (as a signal would); cold cancels running handlers."""
        self.stops.stop(cold=cold)

    async def _fetch(self, free: int) -> list[Message]:
        """Read up to `free` messages, asking the queues in the reading order (priority, rotation)."""
        found: list[Message] = []
        threads = self.slots.free_threads()
        self._held_back = False
        try:
            async with self.pool.connection() as conn:
                for queue in self.order.next(skip=self.pauses.paused):
                    room = free - len(found)
                    if room <= 0:
                        break
                    spec = self.registry.get(queue)
                    # Capped by the queue's own slots (`concurrency=`) and, for a `def` handler, by threads.
                    wanted = min(room, self.slots.free_of(spec), room if spec.is_async else threads)
                    read = (
                        []
                        if wanted <= 0
                        else await deliveries.read(
                            conn,
                            queue,
                            spec.read_vt,
                            wanted,
                            job_rows=spec.job_rows,
                            stamps=self._stamps,
                            marks=self._marks,
                        )
                    )
                    if not spec.is_async:
                        threads -= len(read)
                    self._held_back = self._held_back or (wanted < room and len(read) == wanted)
                    found += read
        except RETRIED as exc:
            await self.trouble.wait_out(exc)
            return found  # what was read before the failure is ours: run it
        self.trouble.recovered()
        return found

    async def _idle(self, *, found: bool) -> None:
        """Wait for a notification, the (backed-off) poll interval, or a stop.

        About to wait while listening, the worker first announces (or renews, every few poll
        intervals) that it waits, so inserts notify, and returns to read once more before it
        waits. Also after a read that found work: under steady traffic every read may find a
        message, and the announcement must not lapse while the worker waits between them.
        """
        if await self.announcements.announce_if_due():
            return
        if not self._held_back:
            await self.wakeup.wait(self.stops.stopping, found=found)
            return
        # A queue had more than its free threads or own slots: the next free slot may start one.
        # The event was cleared before the read, so a handler that ended during it is not missed.
        waiters_ = {
            asyncio.ensure_future(self.slots.freed.wait()),
            asyncio.ensure_future(self.wakeup.wait(self.stops.stopping, found=found)),
        }
        try:
            await asyncio.wait(waiters_, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters_:
                waiter.cancel()

    async def _queues_empty(self) -> bool:
        """Burst mode: no message left in any of our queues (delayed and held ones count)."""
        try:
            async with self.pool.connection() as conn:
                for queue in self.pauses.unpaused(self.queues):  # a paused queue's messages wait
                    if await deliveries.has_messages(conn, queue):
                        return False
        except TRANSIENT as exc:
            await self.trouble.wait_out(exc)
            return False
        return True

    # -- start and stop ------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        """Every resource the worker runs on, made here and closed here (in reverse order)."""
        # A concrete logger for the hot path: the module's lazy proxy re-resolves the structlog
        # configuration on every call, a measurable cost per message at thousands a second.
        bound: Any = log.bind()
        self._check_queues()
        self.features = await asyncio.to_thread(self._prepare_database)
        listening = self._listen_wanted() and self._notifying
        poll = self.settings.poll_interval.total_seconds()
        self.wakeup = Wakeup(min(poll, BURST_WAIT_S) if self.burst else poll)  # see BURST_WAIT_S
        side_tasks = SideTasks(self.stops.stopping, self._side_task_failed)
        async with AsyncExitStack() as stack:
            threads = self.executor = HandlerThreads(self.settings.threads)  # the CLI asks it at exit
            stack.callback(threads.shutdown, wait=False, cancel_futures=True)
            self.pool: AsyncConnectionPool = async_pool(
                self.target,
                min_size=min(self.db_settings.pool_min_size, self.db_settings.pool_max_size),
                max_size=self.db_settings.pool_max_size,
            )
            await self.pool.open(wait=False)
            stack.push_async_callback(self.pool.close)
            hooks = job_webhooks(self.settings, self.pool, side_tasks.watch)  # recorded as rows
            stack.push_async_callback(hooks.close)
            self.trouble = DatabaseTrouble(self.pool, self.stops, self.settings.reconnect_max.total_seconds())
            self.settle = Settle(
                self.pool,
                self.trouble,
                hooks,
                bound,
                keeps_job_rows=self.registry.keeps_job_rows,
                log_successes=self.settings.log_level in {"debug", "info"},  # job.succeeded is info
                on_settled=self._slot_may_be_free,
            )
            # The flusher stops after the drain and before the pool closes.
            side_tasks.watch(self.settle.acks.start(), lasting=True)
            stack.push_async_callback(self.settle.acks.close)
            self.announcements = Announcements(
                self.pool, self.trouble, self.wakeup, lambda: self.pauses.unpaused(self.queues)
            )
            leases = Leases(self.pool, self.settings.heartbeat_interval.total_seconds())
            self.slots = Slots(self.settings.concurrency, threads, leases, self.settle)
            priorities = {queue: self.registry.get(queue).priority for queue in self.queues}
            self.order = ReadingOrder(priorities, self.settings.priority_share)
            self.pauses = Pauses(self.pool, self.queues, interval_s=poll, on_resumed=self.wakeup.notify)
            await self.pauses.refresh()  # before the first read: a queue paused now is not read
            self.cancels = Cancels(
                self.pool,
                interval_s=self.settings.heartbeat_interval.total_seconds(),
                grace_s=self.settings.cancel_grace.total_seconds(),
                watch=side_tasks.watch,
            )
            self.settle.observe(self.cancels.settled)  # a cancelled parent's children go with it
            self.running_marks = RunningMarks(self.pool, self.settings.running_after.total_seconds())
            self.presence = Presence(self.pool, card_for(self.queues, self.settings), self.slots.in_flight)
            self.presence.observe(self.settle)
            runtime = Runtime(
                pool=self.pool,
                executor=threads,
                loop=asyncio.get_running_loop(),
                settings=self.settings,
                keeps_job_rows=self.registry.keeps_job_rows,
            )
            stack.push_async_callback(runtime.aclose)  # the handlers' shared client (ctx.http), if made
            self.attempts = Attempts(
                self.registry,
                slots=self.slots,
                settle=self.settle,
                hooks=hooks,
                runtime=runtime,
                logger=bound,
                progress_interval_s=self.settings.progress_interval.total_seconds(),
                cancels=self.cancels,
                marks=self.running_marks,
            )
            stack.enter_context(self.stops.on_signals(self.slots.in_flight))
            self._monitor(stack, side_tasks, leases, hooks, listening=listening)
            self._start_side_tasks(side_tasks, leases, listening=listening)
            self._log_started(listening=listening)
            self.announcements.enabled = listening
            try:
                yield
            finally:
                self.stops.stopping.set()
                await side_tasks.stop()
                await self.announcements.withdraw()
                await self.presence.withdraw()
                log.info("worker.stopped")

    def _monitor(
        self,
        stack: AsyncExitStack,
        side_tasks: SideTasks,
        leases: Leases,
        hooks: Webhooks,
        *,
        listening: bool,
    ) -> None:
        """/metrics /livez /readyz, served from a thread, when PGMQ_WORKER_METRICS_PORT is set."""
        if self.settings.metrics_port is None:
            return
        assert self.features is not None  # noqa: S101  detected before the parts are made
        monitoring = Monitoring(self.settings, self.target, self.queues, self.stops)
        wakeup = "listen+poll" if listening else "poll"
        monitoring.watch(self.settle, self.slots, leases, self.trouble, hooks, self.features.version, wakeup)
        monitoring.start()  # MetricsPortUnavailable: the worker does not start
        stack.callback(monitoring.close)
        side_tasks.start(monitoring.loop.run(), "loop_watch")

    def _start_side_tasks(self, side_tasks: SideTasks, leases: Leases, *, listening: bool) -> None:
        """The parts that run beside the loop, supervised: one that dies stops the worker."""
        side_tasks.start(leases.run(self.stops.stopping), "leases")
        side_tasks.start(self.cancels.run(self.stops.stopping), "cancels")
        side_tasks.start(self.running_marks.run(self.stops.stopping), "running_marks")
        side_tasks.start(self.presence.run(self.stops.stopping), "presence")
        side_tasks.start(self.pauses.run(self.stops.stopping), "pauses")
        self._start_scheduler(side_tasks)
        self.pruner = Pruner.when_kept(self.pool, self.settings)  # None: retention 0, keep all
        if self.pruner is not None:
            side_tasks.start(self.pruner.run(self.stops.stopping), "retention")
        if listening:
            side_tasks.start(
                self.wakeup.listen(
                    self.target,
                    self.queues,
                    self.stops.stopping,
                    self.settings.reconnect_max.total_seconds(),
                    self.pauses,
                ),
                "listener",
            )

    def _log_started(self, *, listening: bool) -> None:
        """worker.started, with what the worker serves and how it wakes."""
        assert self.features is not None  # noqa: S101  detected first
        log.info(
            "worker.started",
            queues=self.queues,
            concurrency=self.settings.concurrency,
            threads=self.settings.threads,
            priorities=self.order.describe() if len(self.order.priorities) > 1 else None,
            pgmq=self.features.version,
            wakeup="listen+poll" if listening else "poll",
            database=self.target.describe(),
            burst=self.burst,
            paused=sorted(self.pauses.paused) or None,
            loop=loop_name(),
        )

    def _start_scheduler(self, side_tasks: SideTasks) -> None:
        """Send the ticks of our queues' schedules (a burst worker drains and exits: the fleet sends them)."""
        if self.burst or not (scheduled := schedules_for(self.registry.schedules(), self.queues)):
            return
        scheduler = Scheduler(
            self.pool,
            scheduled,
            self.registry.keeps_job_rows,
            reconnect_max_s=self.settings.reconnect_max.total_seconds(),
        )
        side_tasks.start(scheduler.run(self.stops.stopping), "scheduler")

    def _check_queues(self) -> None:
        if not self.queues:
            raise UnknownQueue("no handlers are registered: pass --import with your handler module")
        for queue in self.queues:
            self.registry.get(queue)  # UnknownQueue when no handler serves it

    def _prepare_database(self) -> PgmqFeatures:
        """Detect pgmq, create missing queues (and their _dlq) and their insert triggers."""
        if not self.target.transaction_pooler and (evidence := transaction_pooler_evidence(self.target)):
            # Before anything runs: prepared statements would collide and LISTEN would hear nothing.
            log.error("worker.pooler_misconfigured", evidence=evidence)
            raise PoolerMisconfigured(
                f"DATABASE_URL goes through a transaction pooler ({evidence}); "
                "set PGMQ_WORKER_POOLER=transaction"
            )
        with connect(self.target) as conn:
            features = detect(conn)
            notifying = True
            for queue in self.queues:
                pgmq.ensure_queue(conn, queue, partitioned=self.registry.get(queue).partitioned)
                if self._listen_wanted() and not pgmq.ensure_insert_trigger(conn, queue):
                    log.warning("worker.notify_unavailable", queue=queue, note="not the table owner; polling")
                    notifying = False
        self._notifying = notifying
        return features

    def _listen_wanted(self) -> bool:
        return self.settings.listen and self.target.allows_listen

    def _slot_may_be_free(self) -> None:
        """A settle landed: the in-flight cap may have held the loop, and a burst may be done."""
        self.slots.freed.set()

    def _side_task_failed(self, failure: SideTaskFailed) -> None:
        """A side task died (SideTasks logged it): the worker must not run on without it."""
        self.stops.stop_for(failure)
