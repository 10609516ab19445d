"""One delivery, top to bottom: lease, context, handler, outcome, settle.

`Attempts.run(message)` is the whole life of a message in this worker, in one task of its own:

1. its handler's policy (a fan-out child may bring its own timeout and attempts);
2. the lease, held (and renewed by the heartbeat) for as long as the handler runs; losing it
   cancels the task;
3. the context the handler gets, with its job row's steps and progress when it has one (the row
   says `running` once the delivery has run a moment, or at its first write: worker.running_marks);
4. the handler itself (worker.execute: validate, call within the timeout, name the outcome);
5. the outcome's settle (worker.settle), after the lease is dropped and the slot freed.

Nothing one delivery does stops the worker: our own failures around the handler settle as a
failed attempt, a cancellation as a release (shutdown) or nothing at all (lease lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.logs import get_logger
from queues.pgmq import aqueue_exists
from worker import webhooks
from worker.cancels import CancelFlag, Cancels
from worker.context import Context, JobRow, Runtime
from worker.errors import UnknownQueue
from worker.execute import execute, failed
from worker.leases import Lease
from worker.outcome import Abandoned, Cancelled, DeadLetter, ErrorInfo, Handoffs, Outcome, Succeeded
from worker.progress import ProgressReporter
from worker.registry import HandlerSpec, Registry
from worker.running_marks import RunningMark, RunningMarks
from worker.settle import Settle, bind_delivery
from worker.slots import Slots
from worker.steps import Steps
from worker.store import ticks
from worker.store.deliveries import Message
from worker.trouble import TRANSIENT
from worker.webhooks import Webhooks

log = get_logger()

# What `sys.exit()` or a stray KeyboardInterrupt in handler code raises: a failed attempt, since
# nothing one delivery does may stop the worker (signals reach the worker through its handlers).
HANDLER_EXITS = (SystemExit, KeyboardInterrupt)


class Attempts:
    """Runs each delivery the worker reads, from its lease to its settle."""

    def __init__(
        self,
        registry: Registry,
        *,
        slots: Slots,
        settle: Settle,
        hooks: Webhooks,
        runtime: Runtime,
        logger: Any,
        progress_interval_s: float,
        cancels: Cancels,
        marks: RunningMarks,
    ) -> None:
        self._registry = registry
        self._slots = slots
        self._settle = settle
        self._cancels = cancels
        self._marks = marks
        self._hooks = hooks
        self._runtime = runtime
        self._log = logger  # a concrete logger: the module's lazy proxy re-resolves per call
        self._progress_interval_s = progress_interval_s

    def start(self, message: Message) -> None:
        """Run the delivery in a task of its own, in a slot."""
        spec = self._registry.get(message.queue)
        self._slots.start(message, spec, self.run(message, spec))

    async def run(self, message: Message, spec: HandlerSpec) -> None:
        """The life of one delivery under its handler's `spec` (see the module's docstring)."""
        spec = self._policy(message, spec)
        bind_delivery(message)  # this task runs in its own copy of the context: never unbound
        started = time.perf_counter()
        async with self._slots.lease(message, spec) as lease:
            watching = self._cancels.watch(message, is_async=spec.is_async)
            with watching as cancel, self._marks.held(message) as mark:
                try:
                    outcome = await self._attempt(spec, message, lease, cancel, mark)
                except asyncio.CancelledError:  # outside the handler (a handoff check, say): as inside it
                    outcome = Abandoned("lease_lost" if lease.lost else "shutdown")
                except (
                    Exception
                ) as exc:  # our own code (the context, a reporter, the handoffs): settled all the same
                    outcome = failed(spec, message, exc)
                outcome = self._cancels.outcome(cancel, outcome)  # a cancelled job is never retried
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        await self._settle.settle(spec, message, outcome, duration_ms)

    @staticmethod
    def _policy(message: Message, spec: HandlerSpec) -> HandlerSpec:
        if message.timeout_s is None and message.max_attempts is None:
            return spec
        return dataclasses.replace(  # a fan-out child's own policy
            spec,
            timeout=message.timeout_s if message.timeout_s is not None else spec.timeout,
            max_attempts=message.max_attempts or spec.max_attempts,
        )

    async def _attempt(
        self, spec: HandlerSpec, message: Message, lease: Lease, cancel: CancelFlag, mark: RunningMark
    ) -> Outcome:
        if message.cancel_requested:  # cancelled while an earlier delivery ran: never run it again
            return Cancelled.of("before_start")
        if message.attempt > spec.max_attempts:
            # Delivered more often than allowed without an outcome: the handler killed its
            # process (os._exit, out of memory) or outlived its lease each time. Stop the loop.
            error = ErrorInfo(
                type="AttemptsExhausted",
                message=(
                    f"delivered {message.attempt} times (max_attempts={spec.max_attempts}) "
                    "without finishing: the handler may crash the worker or outlive its lease"
                ),
                traceback="",
            )
            return DeadLetter("crashed", error)
        ctx = self._context(spec, message, cancel, mark, await self._scheduled_at(message))
        reporter = ctx.job.reporter if ctx.job is not None else None
        # Debug, not info: job.succeeded (or the failure) already says the job ran, and a second
        # JSON line per job was a tenth of the worker's CPU when draining no-op jobs.
        self._log.debug("job.started")
        self._hooks.send(webhooks.started(message))
        try:
            outcome = await execute(spec, message, ctx, self._runtime.executor)
        except asyncio.CancelledError:
            if reporter is not None:
                reporter.discard()
            return Abandoned("lease_lost" if lease.lost else "shutdown")
        except HANDLER_EXITS as exc:  # sys.exit() in a handler fails its attempt; it stops nothing
            outcome = failed(spec, message, exc)
        if reporter is not None:
            await reporter.close()  # the last report lands before the settle
        handoffs = ctx.handoffs.sent
        if isinstance(outcome, Succeeded) and handoffs:
            outcome = await self._with_handoffs(spec, message, outcome.result, handoffs)
        return outcome

    async def _scheduled_at(self, message: Message) -> datetime | None:
        """The tick a schedule sent this message for (asked only on queues with schedules)."""
        if not self._registry.has_schedules(message.queue):
            return None
        async with self._pool.connection() as conn:
            found = await ticks.tick_of(conn, message.queue, message.msg_id)
        if found is None:
            return None
        name, tick = found
        declared = self._registry.schedule(name)
        return tick.astimezone(declared.zone if declared is not None else UTC)

    def _context(
        self,
        spec: HandlerSpec,
        message: Message,
        cancel: CancelFlag,
        mark: RunningMark,
        scheduled_at: datetime | None,
    ) -> Context:
        job = None
        if message.job_id is not None:
            pool = self._pool
            interval = self._progress_interval_s
            reporter = ProgressReporter(pool, message.job_id, message.read_ct, interval, mark)
            steps = Steps(
                pool,
                message.job_id,
                declared=spec.steps,
                reporter=reporter,
                executor=self._runtime.executor,
                cancel=cancel,
                mark=mark,
            )
            job = JobRow(message.job_id, steps, reporter, mark)
        return Context(
            queue=message.queue,
            msg_id=message.msg_id,
            attempt=message.attempt,
            max_attempts=spec.max_attempts,
            enqueued_at=message.enqueued_at,
            log=self._log.bind(queue=message.queue, msg_id=message.msg_id, attempt=message.attempt),
            runtime=self._runtime,
            job=job,
            handoffs=Handoffs(),
            reporter=job.reporter if job is not None else None,
            cancel=cancel,
            scheduled_at=scheduled_at,
        )

    @property
    def _pool(self) -> AsyncConnectionPool:
        pool = self._runtime.pool
        assert pool is not None  # noqa: S101  a worker's runtime always has its pool
        return pool

    async def _with_handoffs(
        self, spec: HandlerSpec, message: Message, result: Any, handoffs: tuple[Any, ...]
    ) -> Outcome:
        """Succeeded with its handoffs, or a failed attempt if one goes to a missing queue."""
        missing: list[str] = []
        try:
            async with self._pool.connection(timeout=5) as conn:
                for queue in sorted({h.queue for h in handoffs}):
                    if not await aqueue_exists(conn, queue):
                        missing.append(queue)
        except TRANSIENT as exc:  # checked again at the settle, which is one transaction
            log.warning("job.handoff_check_failed", error=one_line(exc))
        if missing:
            return failed(spec, message, UnknownQueue(f"ctx.enqueue: no queue named {missing[0]!r}"))
        return Succeeded(result, handoffs)
