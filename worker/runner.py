"""The worker: fetch -> dispatch -> handler -> settle, with leases, wake-ups and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeGuard

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from db.connect import Target, async_pool, connect, transaction_pooler_evidence
from db.listen import reconnect_delay, sleep_or_stop
from db.logs import get_logger
from db.pgmq_install import PgmqFeatures, detect
from db.settings import DatabaseSettings
from queues import fanout, pgmq
from queues.pgmq import Message
from worker import webhooks
from worker.acks import Acks
from worker.context import Context
from worker.errors import InvalidResult, PoolerMisconfigured, SideTaskFailed, UnknownQueue, WorkerError
from worker.execute import execute, failed
from worker.leases import Lease, Leases
from worker.loop import loop_name
from worker.outcome import (
    Abandoned,
    DeadLetter,
    Deferred,
    ErrorInfo,
    Handoff,
    Outcome,
    RetryLater,
    Succeeded,
    Waiting,
    dead_letter_record,
)
from worker.progress import ProgressReporter
from worker.registry import Registry, Task
from worker.settings import WorkerSettings
from worker.side_tasks import SideTasks
from worker.steps import Steps, run_in_thread
from worker.threads import HandlerThreads
from worker.wakeup import BURST_WAIT_S, Wakeup
from worker.webhooks import Webhooks

log = get_logger()

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)
SETTLE_TRIES = 6
PREPARED_STATEMENT_ERRORS = (
    psycopg.errors.DuplicatePreparedStatement,
    psycopg.errors.InvalidSqlStatementName,
)
# A value the settle cannot store: Postgres refused it (a NUL in a result), or encoding it raised.
VALUE_ERRORS = (psycopg.DataError, TypeError, ValueError, RecursionError, OverflowError)
# What `sys.exit()` or a stray KeyboardInterrupt in handler code raises: a failed attempt, since
# nothing one delivery does may stop the worker (signals reach the worker through its handlers).
HANDLER_EXITS = (SystemExit, KeyboardInterrupt)


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
        self._stopping = asyncio.Event()  # warm: fetch nothing more, let handlers finish
        self._cold = asyncio.Event()  # second signal: cancel handlers now
        self._slot_freed = asyncio.Event()
        # Every delivery's task, from dispatch to settled (the drain waits for all of them).
        self._in_flight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._running: set[tuple[str, int]] = set()  # of those, the ones whose handler still runs
        self._threaded: set[tuple[str, int]] = set()  # of those, `def` handlers (one thread each)
        self._capped = False  # the last read took fewer than a `def` queue offered: threads were busy
        self._late: set[asyncio.Task[None]] = set()  # settles retrying a batched ack that failed
        self._rotation = 0
        self._db_failures = 0
        self._notifying = False
        self._fatal: WorkerError | None = None  # why the worker stopped itself: run() raises it
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._announcing = False  # idle waits are announced (listening, and allowed to)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until a signal (or, in burst mode, until the queues are empty); then drain."""
        async with self._lifespan():
            try:
                while not self._stopping.is_set():
                    free = self._free_slots()
                    if free <= 0:
                        await self._wait_for_slot()
                        continue
                    self._slot_freed.clear()  # a slot freed during the read wakes a capped wait below
                    messages = await self._fetch(free)
                    for message in messages:
                        self._dispatch(message)
                    if len(messages) >= free:
                        continue  # there may be more right now
                    if self.burst and (self._in_flight or self.acks.pending or self._late):
                        await self._wait_for_slot()  # the next settle may be the last: look again then
                        continue
                    if self.burst and await self._queues_empty():
                        log.info("worker.burst_done")
                        break
                    await self._idle(found=bool(messages))
            except BaseException:
                self._cold.set()  # the loop itself failed: give back what we hold, now
                raise
            finally:
                await self._drain(self.settings.shutdown_grace.total_seconds())
        if self._fatal is not None:
            raise self._fatal

    def _free_slots(self) -> int:
        """Handlers that may start now.

        A slot frees when its handler returns, not when its (batched) ack lands: the next read
        overlaps the previous batch's ack instead of waiting for it. Deliveries still settling
        (a task, or an ack handed to Acks) are capped at another `concurrency`, so a slow
        database holds at most twice as many.
        """
        concurrency = self.settings.concurrency
        settling = len(self._in_flight) + self.acks.pending
        return min(concurrency - len(self._running), 2 * concurrency - settling)

    def _free_threads(self) -> int:
        """`def` handlers that may start now: threads not taken by a running or timed-out handler.

        A sync handler past its timeout keeps its thread until it returns (`executor.busy` counts
        it); one dispatched but not yet started is only in `_threaded`.
        """
        return self.settings.threads - max(len(self._threaded), self.executor.busy)

    async def _fetch(self, free: int) -> list[Message]:
        """Read up to `free` messages, starting from a rotating queue so none starves."""
        order = self.queues[self._rotation :] + self.queues[: self._rotation]
        self._rotation = (self._rotation + 1) % len(self.queues)
        found: list[Message] = []
        threads = self._free_threads()
        self._capped = False
        try:
            async with self.pool.connection() as conn:
                for queue in order:
                    wanted = free - len(found)
                    if wanted <= 0:
                        break
                    task = self.registry.get(queue)
                    capped = not task.is_async and threads < wanted  # a `def` handler needs a thread
                    if capped:
                        wanted = threads
                    read = (
                        []
                        if wanted <= 0
                        else await pgmq.read(conn, queue, task.read_vt, wanted, job_rows=task.job_rows)
                    )
                    if not task.is_async:
                        threads -= len(read)
                    self._capped = self._capped or (capped and len(read) == wanted)  # more may wait
                    found += read
        except (*PREPARED_STATEMENT_ERRORS, *DB_ERRORS) as exc:
            if _pooler_misconfigured(exc):
                self._fail(exc)
            else:
                await self._database_trouble(exc)
            return found  # what was read before the failure is ours: run it
        self._db_failures = 0
        return found

    def _dispatch(self, message: Message) -> None:
        """Start one task per message; the slot frees when the task settles."""
        job = asyncio.create_task(self._run_one(message), name=f"{message.queue}:{message.msg_id}")
        key = (message.queue, message.msg_id)
        self._in_flight[key] = job
        self._running.add(key)
        if not self.registry.get(message.queue).is_async:
            self._threaded.add(key)

        def _done(_: asyncio.Task[None]) -> None:
            self._in_flight.pop(key, None)
            self._running.discard(key)  # a task cancelled before its handler started
            self._threaded.discard(key)
            self._slot_freed.set()

        job.add_done_callback(_done)

    async def _idle(self, *, found: bool) -> None:
        """Wait for a notification, the (backed-off) poll interval, or a stop.

        About to wait while listening, the worker first announces (or renews, every few poll
        intervals) that it waits, so inserts notify, and returns to read once more before it
        waits. Also after a read that found work: under steady traffic every read may find a
        message, and the announcement must not lapse while the worker waits between them.
        """
        if self._announcing and self.wakeup.announce_due() and await self._announce_waiting():
            return
        if not self._capped:
            await self.wakeup.wait(self._stopping, found=found)
            return
        # A `def` queue had more than its free threads: the next free slot may start one. The
        # event was cleared before the read, so a handler that ended during it is not missed.
        waiters = {
            asyncio.ensure_future(self._slot_freed.wait()),
            asyncio.ensure_future(self.wakeup.wait(self._stopping, found=found)),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _announce_waiting(self) -> bool:
        """Tell the database this worker waits on its queues (migration 0013); True once committed."""
        at = time.monotonic()
        try:
            async with self.pool.connection(timeout=5) as conn:
                await pgmq.announce_waiting(conn, self._worker_id, self.queues, self.wakeup.announce_ttl)
        except DB_ERRORS as exc:
            await self._database_trouble(exc)
            return False
        except psycopg.Error as exc:  # no privilege on pgmq_worker.waiters, say: inserts will not notify
            self._announcing = False
            log.warning("worker.notify_unavailable", reason=_one_line(exc), note="polling")
            return False
        self.wakeup.announced(at)
        return True

    async def _withdraw_waiting(self) -> None:
        """Stopping: inserts need not notify on this worker's account any more (best effort)."""
        with contextlib.suppress(*DB_ERRORS, psycopg.Error):
            async with self.pool.connection(timeout=2) as conn:
                await pgmq.withdraw_waiting(conn, self._worker_id)

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        waiters = {
            asyncio.ensure_future(self._slot_freed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _queues_empty(self) -> bool:
        """Burst mode: no message left in any of our queues (delayed and held ones count)."""
        try:
            async with self.pool.connection() as conn:
                for queue in self.queues:
                    if await pgmq.has_messages(conn, queue):
                        return False
        except DB_ERRORS as exc:
            await self._database_trouble(exc)
            return False
        return True

    # -- one message ---------------------------------------------------------------------------

    async def _run_one(self, message: Message) -> None:
        task = self.registry.get(message.queue)
        if message.timeout_s is not None or message.max_attempts is not None:
            task = dataclasses.replace(  # a fan-out child's own policy
                task,
                timeout=message.timeout_s if message.timeout_s is not None else task.timeout,
                max_attempts=message.max_attempts or task.max_attempts,
            )
        _bind_delivery(message)  # this task runs in its own copy of the context: never unbound
        this = asyncio.current_task()
        assert this is not None  # noqa: S101  always inside a task
        lease = self.leases.hold(message, task.read_vt, this.cancel)
        started = time.perf_counter()
        try:
            outcome = await self._execute(task, message, lease)
        except asyncio.CancelledError:  # outside the handler (a handoff check, say): as inside it
            outcome = Abandoned("lease_lost" if lease.lost else "shutdown")
        except Exception as exc:  # our own code (the context, a reporter, the handoffs): settled all the same
            outcome = failed(task, message, exc)
        finally:
            self.leases.drop(lease)  # before settling: a renewal racing the ack is not a loss
            self._running.discard((message.queue, message.msg_id))
            self._threaded.discard((message.queue, message.msg_id))
            self._slot_freed.set()
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        if _batched(outcome, task):
            # The hot path: this task ends here; the success is logged when its batch lands.
            landed = functools.partial(self._acked, task, message, outcome, duration_ms)
            self.acks.ack_then(message, outcome.result, landed)
        else:
            await asyncio.shield(self._settle(task, message, outcome, duration_ms))

    def _acked(
        self,
        task: Task,
        message: Message,
        outcome: Succeeded,
        duration_ms: float,
        landed: bool | BaseException,
    ) -> None:
        """A batched ack landed (True: acked; False: the lease had passed on) or failed.

        A failure goes to the settle loop, which retries database trouble and logs the rest; the
        drain waits for it as for a delivery's task. No per-delivery future or task to wake: they
        were a tenth of the worker's CPU when draining no-op jobs.
        """
        self._slot_freed.set()  # the in-flight cap may have held the loop; a burst may be done
        if isinstance(landed, BaseException):
            settle = asyncio.ensure_future(self._settle_again(task, message, outcome, duration_ms, landed))
            self._late.add(settle)
            settle.add_done_callback(self._late_done)
            return
        self._settled(message, outcome, landed, duration_ms)

    async def _settle_again(
        self, task: Task, message: Message, outcome: Succeeded, duration_ms: float, error: BaseException
    ) -> None:
        _bind_delivery(message)  # a task of its own, started from the flusher's context
        await self._settle(task, message, outcome, duration_ms, error)

    def _late_done(self, settle: asyncio.Future[None]) -> None:
        self._late.discard(settle)
        self._slot_freed.set()

    async def _execute(self, task: Task, message: Message, lease: Lease) -> Outcome:
        if message.attempt > task.max_attempts:
            # Delivered more often than allowed without an outcome: the handler killed its
            # process (os._exit, out of memory) or outlived its lease each time. Stop the loop.
            error = ErrorInfo(
                type="AttemptsExhausted",
                message=(
                    f"delivered {message.attempt} times (max_attempts={task.max_attempts}) "
                    "without finishing: the handler may crash the worker or outlive its lease"
                ),
                traceback="",
            )
            return DeadLetter("crashed", error)
        reporter = None
        if message.job_id is not None:
            reporter = ProgressReporter(
                self.pool, message.job_id, message.read_ct, self.settings.progress_interval.total_seconds()
            )
        ctx = Context(
            queue=message.queue,
            msg_id=message.msg_id,
            attempt=message.attempt,
            max_attempts=task.max_attempts,
            enqueued_at=message.enqueued_at,
            log=self._log.bind(queue=message.queue, msg_id=message.msg_id, attempt=message.attempt),
            executor=self.executor,
            reporter=reporter,
            loop=asyncio.get_running_loop(),
            pool=self.pool,
            no_job_rows=self._no_job_rows,
            steps=None
            if message.job_id is None
            else Steps(
                self.pool,
                message.job_id,
                declared=task.steps,
                reporter=reporter,
                to_thread=functools.partial(run_in_thread, self.executor),
            ),
        )
        # Debug, not info: job.succeeded (or the failure) already says the job ran, and a second
        # JSON line per job was a tenth of the worker's CPU when draining no-op jobs.
        self._log.debug("job.started")
        self.webhooks.send(webhooks.started(message))
        try:
            outcome = await execute(task, message, ctx, self.executor)
        except asyncio.CancelledError:
            if reporter is not None:
                reporter.discard()
            return Abandoned("lease_lost" if lease.lost else "shutdown")
        except HANDLER_EXITS as exc:  # sys.exit() in a handler fails its attempt; it stops nothing
            outcome = failed(task, message, exc)
        if reporter is not None:
            await reporter.close()  # the last report lands before the settle
        if isinstance(outcome, Succeeded) and ctx.outbox:
            outcome = await self._with_handoffs(task, message, outcome, ctx.outbox)
        return outcome

    async def _with_handoffs(
        self, task: Task, message: Message, outcome: Succeeded, outbox: list[Handoff]
    ) -> Outcome:
        """Succeeded with its handoffs, or a failed attempt if one goes to a missing queue."""
        missing: list[str] = []
        try:
            async with self.pool.connection(timeout=5) as conn:
                for queue in sorted({h.queue for h in outbox}):
                    if not await pgmq.aqueue_exists(conn, queue):
                        missing.append(queue)
        except DB_ERRORS as exc:  # checked again at the settle, which is one transaction
            log.warning("job.handoff_check_failed", error=_one_line(exc))
        if missing:
            return failed(task, message, UnknownQueue(f"ctx.enqueue: no queue named {missing[0]!r}"))
        return Succeeded(outcome.result, tuple(outbox))

    async def _settle(
        self,
        task: Task,
        message: Message,
        outcome: Outcome,
        duration_ms: float,
        first_error: BaseException | None = None,
    ) -> None:
        """Record the outcome in pgmq, retrying through connection trouble; guarded by the lease.

        `first_error`: how the first try (a batched ack, through Acks) failed. Never raises: a
        success that cannot be recorded (Postgres refuses its result) is dead-lettered
        `invalid_result`; one that fails otherwise becomes a failed attempt; a failure that
        cannot be recorded is logged, and the message reappears after its visibility timeout.
        """
        if isinstance(outcome, Abandoned) and outcome.why == "lease_lost":
            log.warning("job.abandoned", reason="lease_lost", duration_ms=duration_ms)
            return
        for attempt in range(1, SETTLE_TRIES + 1):
            try:
                ours = await self._settle_once(task, message, outcome, first_error)
            except PREPARED_STATEMENT_ERRORS + DB_ERRORS as exc:
                first_error = None
                if _pooler_misconfigured(exc):
                    self._fail(exc)
                    return
                log.warning("job.settle_failed", error=_one_line(exc), tries=attempt)
                await self._purge_broken_connections()
                await asyncio.sleep(reconnect_delay(attempt, 5.0))
                continue
            except Exception as exc:
                first_error = None
                instead = _unrecorded(task, message, outcome, exc)
                if instead is not None:  # a success that cannot be recorded as one: record this
                    log.warning("job.settle_refused", error=_one_line(exc), instead=type(instead).__name__)
                    outcome = instead
                    continue
                # Not transient (the queue table was dropped, say): retrying cannot help. The
                # message is untouched and reappears after its visibility timeout.
                log.exception("job.settle_failed", error=_one_line(exc), tries=attempt, transient=False)
                return
            self._settled(message, outcome, ours, duration_ms)
            return
        log.error("job.settle_abandoned", note="the message reappears after its visibility timeout")

    async def _settle_once(
        self, task: Task, message: Message, outcome: Outcome, first_error: BaseException | None
    ) -> bool:
        """One try; `first_error` (how a batched ack failed) is raised as if this try had failed so."""
        if first_error is not None:
            raise first_error
        if _batched(outcome, task):
            return await self.acks.ack(message, outcome.result)  # batched with others
        async with self.pool.connection(timeout=5) as conn:
            return await self._record(conn, task, message, outcome)

    def _settled(self, message: Message, outcome: Outcome, ours: bool, duration_ms: float) -> None:
        # Bound here, not taken from the task's context: a batched ack lands in the flusher's.
        if not (ours and isinstance(outcome, Succeeded) and not self._info):
            bound = self._log.bind(queue=message.queue, msg_id=message.msg_id, attempt=message.attempt)
            self._log_outcome(bound, outcome, ours, duration_ms)
        if ours:
            self.webhooks.send(webhooks.settled(message, outcome))

    async def _record(  # noqa: PLR0911  (one return per kind of outcome)
        self, conn: psycopg.AsyncConnection[Any], task: Task, message: Message, outcome: Outcome
    ) -> bool:
        match outcome:
            case Succeeded(result=result, then=()):
                return await pgmq.ack(conn, message, result, archive=task.archive)
            case Succeeded(result=result, then=handoffs):
                async with conn.transaction():  # the handoffs exist if and only if the ack happened
                    ours = await pgmq.ack(conn, message, result, archive=task.archive)
                    for h in handoffs if ours else ():
                        sent: object
                        if h.queue in self._no_job_rows:  # that queue's worker keeps no job rows
                            sent = await pgmq.asend_if_exists(conn, h.queue, h.body, h.delay_s)
                        else:
                            sent = await pgmq.asend_job(
                                conn, h.queue, h.body, h.delay_s, owner=h.owner, key=None
                            )
                        if sent is None:
                            raise UnknownQueue(f"ctx.enqueue: no queue named {h.queue!r}")
                return ours
            case RetryLater(delay=delay, error=error):
                return await pgmq.retry_later(conn, message, delay, error.as_dict())
            case Deferred(delay=delay, error=error):
                return await pgmq.defer(conn, message, delay, error.as_dict())
            case Waiting(job_id=job_id, fan_out=name):
                # The fan-out row is locked first, as the settle of its last child locks it: the
                # parent sleeps until the deadline only if that child has not ended meanwhile.
                async with conn.transaction():
                    state = await fanout.lock(conn, job_id, name)
                    wake_in = 0.0
                    if state is not None and state.status == "open" and not state.complete:
                        wake_in = state.remaining_s + 1
                    return await pgmq.park(conn, message, wake_in)
            case DeadLetter():
                record = dead_letter_record(message, outcome, task.max_attempts)
                return await pgmq.dead_letter(conn, message, record)
            case Abandoned():
                held = [(message.msg_id, message.read_ct)]
                released = await pgmq.release(conn, message.queue, held, job_rows=message.job_id is not None)
                return bool(released)

    @staticmethod
    def _log_outcome(log: Any, outcome: Outcome, ours: bool, duration_ms: float) -> None:
        if not ours:
            log.warning(
                "lease.lost", note="the message was delivered again after its lease ran out; not settled"
            )
            return
        match outcome:
            case Succeeded():
                log.info("job.succeeded", duration_ms=duration_ms)
            case RetryLater(delay=delay, error=error):
                log.warning(
                    "job.retry_scheduled",
                    delay_s=round(delay, 3),
                    error_type=error.type,
                    error=error.message,
                    duration_ms=duration_ms,
                )
            case Deferred(delay=delay, error=error):
                log.info(
                    "job.deferred", delay_s=round(delay, 3), reason=error.message, duration_ms=duration_ms
                )
            case DeadLetter(reason=reason, error=error):
                log.error(
                    "job.dead_lettered",
                    reason=reason,
                    error_type=error.type,
                    error=error.message,
                    duration_ms=duration_ms,
                )
            case Waiting(fan_out=name):
                log.info("job.waiting", fan_out=name, duration_ms=duration_ms)
            case Abandoned():
                log.info("job.released", duration_ms=duration_ms)

    # -- start, trouble, stop ------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        # A concrete logger for the hot path: the module's lazy proxy re-resolves the structlog
        # configuration on every call, a measurable cost per message at thousands a second.
        self._log: Any = log.bind()
        self._info = self.settings.log_level in {"debug", "info"}  # job.succeeded is info
        self._check_queues()
        self._no_job_rows = frozenset(t.queue for t in self.registry if not t.job_rows)
        self.features = await asyncio.to_thread(self._prepare_database)
        self.executor = HandlerThreads(self.settings.threads)
        self.pool: AsyncConnectionPool = async_pool(
            self.target,
            min_size=min(self.db_settings.pool_min_size, self.db_settings.pool_max_size),
            max_size=self.db_settings.pool_max_size,
        )
        self.leases = Leases(self.pool, self.settings.heartbeat_interval.total_seconds())
        poll = self.settings.poll_interval.total_seconds()
        self.wakeup = Wakeup(min(poll, BURST_WAIT_S) if self.burst else poll)  # see BURST_WAIT_S
        self.side_tasks = SideTasks(self._stopping, self._side_task_failed)
        async with AsyncExitStack() as stack:
            await self.pool.open(wait=False)
            stack.push_async_callback(self.pool.close)
            self.acks = Acks(self.pool, batch_errors=DB_ERRORS + PREPARED_STATEMENT_ERRORS)
            # Acks stops its own flusher, after the drain and before the pool closes.
            self.side_tasks.watch(self.acks.start(), lasting=True)
            stack.push_async_callback(self.acks.close)
            secret = self.settings.webhook_secret
            self.webhooks = Webhooks(
                secret.get_secret_value() if secret else None,
                allow_private=self.settings.webhook_allow_private,
                timeout_s=self.settings.webhook_timeout.total_seconds(),
                max_tries=self.settings.webhook_max_tries,
                watch=self.side_tasks.watch,
            )
            stack.push_async_callback(self.webhooks.close)
            stack.callback(self.executor.shutdown, wait=False, cancel_futures=True)
            self._install_signal_handlers()
            stack.callback(self._remove_signal_handlers)
            self.side_tasks.start(self.leases.run(self._stopping), "leases")
            if self._listen_enabled():
                self.side_tasks.start(
                    self.wakeup.listen(
                        self.target,
                        self.queues,
                        self._stopping,
                        self.settings.reconnect_max.total_seconds(),
                    ),
                    "listener",
                )
            log.info(
                "worker.started",
                queues=self.queues,
                concurrency=self.settings.concurrency,
                threads=self.settings.threads,
                pgmq=self.features.version,
                wakeup="listen+poll" if self._listen_enabled() else "poll",
                database=self.target.describe(),
                burst=self.burst,
                loop=loop_name(),
            )
            self._announcing = self._listen_enabled()
            try:
                yield
            finally:
                self._stopping.set()
                await self.side_tasks.stop()
                if self._announcing:
                    await self._withdraw_waiting()
                log.info("worker.stopped")

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
                pgmq.ensure_queue(conn, queue)
                if self._listen_wanted() and not pgmq.ensure_insert_trigger(conn, queue):
                    log.warning("worker.notify_unavailable", queue=queue, note="not the table owner; polling")
                    notifying = False
        self._notifying = notifying
        return features

    def _listen_wanted(self) -> bool:
        return self.settings.listen and self.target.allows_listen

    def _listen_enabled(self) -> bool:
        return self._listen_wanted() and self._notifying

    async def _database_trouble(self, exc: BaseException) -> None:
        """Back off with jitter while the database is away; never exit for it."""
        self._db_failures += 1
        delay = reconnect_delay(self._db_failures, self.settings.reconnect_max.total_seconds())
        await self._purge_broken_connections()
        log.warning(
            "worker.database_unavailable",
            error=_one_line(exc),
            retry_in_s=round(delay, 2),
            failures=self._db_failures,
        )
        await sleep_or_stop(self._stopping, delay)

    def _fail(self, exc: BaseException) -> None:
        """Prepared statements vanish or collide: a transaction pooler we were not told about.

        Retrying cannot help and every settle would fail, so stop (releasing what we hold) and
        let run() raise a one-line error.
        """
        if self._fatal is None:
            log.error("worker.pooler_misconfigured", error=_one_line(exc))
            self._stop_for(
                PoolerMisconfigured(
                    f"prepared statements fail ({type(exc).__name__}): DATABASE_URL goes through a "
                    "transaction pooler; set PGMQ_WORKER_POOLER=transaction"
                )
            )

    def _side_task_failed(self, failure: SideTaskFailed) -> None:
        """A side task died (SideTasks logged it): the worker must not run on without it."""
        self._stop_for(failure)

    def _stop_for(self, error: WorkerError) -> None:
        """Stop now, releasing what we hold (as a second signal would); run() raises `error`."""
        if self._fatal is None:
            self._fatal = error
        self._stopping.set()
        self._cold.set()

    async def _purge_broken_connections(self) -> None:
        """After one connection failed, test the idle ones so the next checkout gets a live one."""
        with contextlib.suppress(Exception):  # best effort: the caller retries either way
            await asyncio.wait_for(self.pool.check(), 5)

    def _unsettled(self) -> int:
        """Deliveries not yet settled: tasks, acks handed to Acks, settles retrying a failed ack."""
        return len(self._in_flight) + self.acks.pending + len(self._late)

    async def _drain(self, grace: float) -> None:
        """Let in-flight handlers (and their acks) finish within `grace`; then cancel and release the rest."""
        if not self._unsettled():
            return
        log.info("worker.draining", in_flight=self._unsettled(), grace_s=grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        cold = asyncio.ensure_future(self._cold.wait())
        try:
            while self._unsettled() and not self._cold.is_set() and loop.time() < deadline:
                flushed = asyncio.ensure_future(self.acks.flushed())
                try:
                    await asyncio.wait(
                        {*self._in_flight.values(), *self._late, flushed, cold},
                        timeout=deadline - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    flushed.cancel()
        finally:
            cold.cancel()
        remaining = list(self._in_flight.values())
        if remaining:
            log.warning("worker.releasing", in_flight=len(remaining))
        for job in remaining:
            job.cancel()  # each settles as Abandoned("shutdown"): visible again at once
        for settle in list(self._late):
            settle.cancel()  # an ack that could not be written: the message reappears after its lease
        await asyncio.gather(*remaining, *self._late, return_exceptions=True)
        if self.acks.dead and self.acks.pending:  # its flusher died: those acks will never be written
            await self._release(self.acks.abandon())

    async def _release(self, messages: list[Message]) -> None:
        """Make deliveries we hold visible again now (best effort: else after their lease)."""
        by_queue: dict[tuple[str, bool], list[tuple[int, int]]] = {}
        for m in messages:
            by_queue.setdefault((m.queue, m.job_id is not None), []).append((m.msg_id, m.read_ct))
        try:
            async with self.pool.connection(timeout=5) as conn:
                for (queue, job_rows), held in by_queue.items():
                    await pgmq.release(conn, queue, held, job_rows=job_rows)
        except (*DB_ERRORS, psycopg.Error) as exc:
            log.warning("worker.release_failed", error=_one_line(exc), messages=len(messages))
            return
        log.warning("worker.released", messages=len(messages))

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stopping.is_set():
            log.info("worker.stopping", signal=sig.name, mode="warm", in_flight=len(self._in_flight))
            self._stopping.set()
        else:
            log.warning("worker.stopping", signal=sig.name, mode="cold", in_flight=len(self._in_flight))
            self._cold.set()

    def stop(self, *, cold: bool = False) -> None:
        """Ask the worker to stop (as a signal would); cold cancels running handlers."""
        self._stopping.set()
        if cold:
            self._cold.set()


def _pooler_misconfigured(exc: BaseException) -> bool:
    """Prepared statements collide: an undeclared transaction pooler. Stop; retrying cannot help.

    Only the errors a pooler causes: a prepared statement missing or already there, or another
    client's statement run under ours' name, a protocol violation ("bind message supplies 4
    parameters, but prepared statement ... requires 3"). A data error is its message's problem,
    even at bind time: the start-up probe (db.connect.transaction_pooler_evidence) is what finds
    an undeclared pooler before any statement could collide.
    """
    if isinstance(exc, PREPARED_STATEMENT_ERRORS):
        return True
    if isinstance(exc, psycopg.errors.ProtocolViolation):
        return "prepared statement" in str(exc)
    return False


def _unrecorded(task: Task, message: Message, outcome: Outcome, exc: Exception) -> Outcome | None:
    """What to record instead of a success whose settle failed for good; None: nothing better.

    Postgres refused its result (a NUL the result check missed), or encoding it raised: dead-letter
    `invalid_result`, as the check does (the same handler returns the same value again). Anything
    else (a handoff's queue gone, our own bug): a failed attempt, retried with the error recorded.
    """
    if not isinstance(outcome, Succeeded):
        return None
    if isinstance(exc, VALUE_ERRORS):
        refused = InvalidResult(f"the result cannot be stored ({type(exc).__name__}: {_one_line(exc)})")
        refused.__cause__ = exc
        return DeadLetter("invalid_result", ErrorInfo.of(refused))
    return failed(task, message, exc)


def _bind_delivery(message: Message) -> None:
    """Name the delivery in every log line of the current context (a task's own copy)."""
    structlog.contextvars.bind_contextvars(
        queue=message.queue, msg_id=message.msg_id, attempt=message.attempt
    )


def _batched(outcome: Outcome, task: Task) -> TypeGuard[Succeeded]:
    """A plain success: acked in a batch with others (an archive or handoffs need their own statement)."""
    return isinstance(outcome, Succeeded) and not task.archive and not outcome.then


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
