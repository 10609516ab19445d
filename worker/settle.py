"""Settling: the one way a delivery's outcome is written, retried, logged and announced.

`Settle.settle(spec, message, outcome, duration_ms)` is the one entry point; every write is fenced
by the delivery's (msg_id, read_ct). A plain success goes to `Acks` and the delivery's task ends:
one flusher writes what has gathered, per queue, in one statement while the next acks gather
behind it, and a batch that fails on one member's data is split down to that member. Any other
outcome, and a delivery whose batch failed, is written on its own: retried through database
trouble, a success Postgres refuses dead-lettered `invalid_result`, anything else logged (the
message reappears after its visibility timeout). Each outcome says its own job status, log line
and webhook (worker.outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeGuard

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.logs import get_logger
from queues import job_sends, pgmq
from queues.errors import UnknownQueue
from worker import webhooks
from worker.execute import unrecorded
from worker.outcome import (
    Abandoned,
    Cancelled,
    DeadLetter,
    Deferred,
    Outcome,
    RetryLater,
    Succeeded,
    Waiting,
    dead_letter_record,
)
from worker.registry import HandlerSpec
from worker.store import deliveries, fanouts, settles
from worker.store.deliveries import Message
from worker.trouble import RETRIED, TRANSIENT, DatabaseTrouble, pooler_misconfigured, retry_delay
from worker.webhooks import Webhooks

log = get_logger()

MAX_BATCH = 500
SETTLE_TRIES = 6

# Called once per delivery with True (acked), False (no longer ours: not acked) or the error.
Landed = Callable[[bool | BaseException], object]
# Told of each settle of ours once it has landed: the delivery, its outcome, the handler's time.
SettleObserver = Callable[[Message, "Outcome", float], object]
Pending = tuple[Message, Any, Landed]


class Acks:
    """Gathers plain successes and acks them in batches; each delivery's `landed` learns how it went."""

    def __init__(self, pool: AsyncConnectionPool, max_batch: int = MAX_BATCH) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._pending: dict[tuple[str, bool], list[Pending]] = {}  # by (queue, job rows)
        self._writing: list[Pending] = []  # the batch being written
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever nothing is pending
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.acked = 0
        self.pending = 0  # handed over, `landed` not yet called

    def start(self) -> asyncio.Task[None]:
        """Start the flusher (the caller watches its task: it ends only when closed)."""
        self._task = asyncio.create_task(self._run(), name="acks")
        return self._task

    async def flushed(self) -> None:
        """Return once everything handed over so far has been written (or failed), `landed` called."""
        if self.pending:
            await self._drained.wait()

    @property
    def dead(self) -> bool:
        """The flusher ended (it never does on its own): what is pending will not be written."""
        return self._task is not None and self._task.done()

    def abandon(self) -> list[Message]:
        """Take back every pending delivery, `landed` not called (the flusher died; release them)."""
        taken = [m for items in [self._writing, *self._pending.values()] for m, _, _ in items]
        self._pending.clear()
        self._writing = []
        self.pending = 0
        self._drained.set()
        return taken

    async def close(self) -> None:
        """Stop the flusher once everything handed to it has been written (or failed)."""
        if self._task is None:
            return
        if not self._task.done():  # a dead flusher was reported by whoever watched it
            await self.flushed()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def add(self, message: Message, result: Any, landed: Landed) -> None:
        """Ack one delivery in the next batch, then call `landed` (see Landed).

        The hot path: no future and no task to wake per delivery (they were a tenth of the
        worker's CPU when draining no-op jobs). The batch is written whether or not anyone waits.
        """
        if self._task is None:
            raise RuntimeError("Acks.start() was not called")
        batch = (message.queue, message.job_id is not None)
        self._pending.setdefault(batch, []).append((message, result, landed))
        self.pending += 1
        self._drained.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = next(iter(self._pending))
                items = self._pending[batch][: self.max_batch]
                rest = self._pending[batch][self.max_batch :]
                if rest:
                    self._pending[batch] = rest
                else:
                    del self._pending[batch]
                self._writing = items
                await self._flush(*batch, items)
                self._writing = []
            self._drained.set()

    async def _flush(self, queue: str, job_rows: bool, items: list[Pending]) -> None:
        done = [(m, result) for m, result, _ in items]
        try:
            async with self.pool.connection(timeout=5) as conn:
                settled = await settles.ack_many(conn, queue, done, job_rows=job_rows)
        except Exception as exc:  # each delivery decides (its settle retries database trouble)
            if len(items) > 1 and not isinstance(exc, RETRIED):
                # A member's value (most likely one result): the statement wrote nothing. Bisect,
                # so the others land and the bad one alone gets the error (about 2 log2(n) writes).
                log.debug("acks.batch_split", queue=queue, size=len(items), error=type(exc).__name__)
                half = len(items) // 2
                await self._flush(queue, job_rows, items[:half])
                await self._flush(queue, job_rows, items[half:])
                return
            for _, _, landed in items:
                self._call(landed, exc)
            return
        self.batches += 1
        self.acked += len(settled)
        for message, _, landed in items:
            self._call(landed, message.msg_id in settled)

    def _call(self, landed: Landed, outcome: bool | BaseException) -> None:
        self.pending -= 1
        try:
            landed(outcome)
        except Exception:  # a callback's bug must not stop the flusher (every later ack would hang)
            log.exception("acks.callback_failed")


def batched(outcome: Outcome, spec: HandlerSpec) -> TypeGuard[Succeeded]:
    """A plain success: acked in a batch with others (an archive or handoffs need their own statement)."""
    return isinstance(outcome, Succeeded) and not spec.archive and not outcome.handoffs


class Settle:
    """Writes outcomes: batched acks, one statement for the rest, retries, the settle log line."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        trouble: DatabaseTrouble,
        hooks: Webhooks,
        logger: Any,
        *,
        keeps_job_rows: Callable[[str], bool],
        log_successes: bool,
        on_settled: Callable[[], object],
    ) -> None:
        self.pool = pool
        self.acks = Acks(pool)
        self._trouble = trouble
        self._hooks = hooks
        self._log = logger
        self._keeps_job_rows = keeps_job_rows
        self._log_successes = log_successes  # job.succeeded is info: not written at warning and above
        self._on_settled = on_settled  # a settle landed: a slot may be free, a burst may be done
        self._again: set[asyncio.Future[None]] = set()  # deliveries whose batched ack failed, settling alone
        self._observers: list[SettleObserver] = []

    def observe(self, observer: SettleObserver) -> None:
        """Call `observer(message, outcome, duration_ms)` after each settle of ours lands (metrics, tallies).

        Observers run on the event loop in the settle's own path: they must be quick and must not
        raise (one that does is logged and the settle goes on).
        """
        self._observers.append(observer)

    @property
    def pending(self) -> int:
        """Deliveries handed over and not yet settled: acks gathering, and settles being retried."""
        return self.acks.pending + len(self._again)

    def retrying(self) -> set[asyncio.Future[None]]:
        """The settles of deliveries whose batched ack failed, still running (the drain waits on them)."""
        return set(self._again)

    async def flushed(self) -> None:
        """Return once every batched ack handed over so far has been written (or failed)."""
        await self.acks.flushed()

    async def give_up(self) -> None:
        """The drain's grace is over: stop retrying, and release what a dead flusher still held."""
        for again in list(self._again):
            again.cancel()  # an ack that could not be written: the message reappears after its lease
        await asyncio.gather(*self._again, return_exceptions=True)
        if self.acks.dead and self.acks.pending:  # its flusher died: those acks will never be written
            await self.release(self.acks.abandon())

    async def settle(self, spec: HandlerSpec, message: Message, outcome: Outcome, duration_ms: float) -> None:
        """Record what one delivery came to; never raises (see the module's docstring)."""
        if batched(outcome, spec):
            # The hot path: the delivery's task ends here; the success is logged when its batch lands.
            self.acks.add(
                message, outcome.result, functools.partial(self._landed, spec, message, outcome, duration_ms)
            )
            return
        await asyncio.shield(self._write(spec, message, outcome, duration_ms))

    async def release(self, messages: list[Message]) -> None:
        """Make deliveries we hold visible again now (best effort: else after their lease)."""
        by_queue: dict[tuple[str, bool], list[tuple[int, int]]] = {}
        for m in messages:
            by_queue.setdefault((m.queue, m.job_id is not None), []).append((m.msg_id, m.read_ct))
        try:
            async with self.pool.connection(timeout=5) as conn:
                for (queue, job_rows), held in by_queue.items():
                    await deliveries.release(conn, queue, held, job_rows=job_rows)
        except (*TRANSIENT, psycopg.Error) as exc:
            log.warning("worker.release_failed", error=one_line(exc), messages=len(messages))
            return
        log.warning("worker.released", messages=len(messages))

    def _landed(
        self,
        spec: HandlerSpec,
        message: Message,
        outcome: Succeeded,
        duration_ms: float,
        landed: bool | BaseException,
    ) -> None:
        """A batched ack landed (True: acked; False: the lease had passed on) or failed (settle it alone)."""
        self._on_settled()
        if isinstance(landed, BaseException):
            again = asyncio.ensure_future(self._write_again(spec, message, outcome, duration_ms, landed))
            self._again.add(again)
            again.add_done_callback(self._again_done)
            return
        self._done(message, outcome, landed, duration_ms)

    async def _write_again(
        self,
        spec: HandlerSpec,
        message: Message,
        outcome: Succeeded,
        duration_ms: float,
        error: BaseException,
    ) -> None:
        bind_delivery(message)  # a task of its own, started from the flusher's context
        await self._write(spec, message, outcome, duration_ms, error)

    def _again_done(self, again: asyncio.Future[None]) -> None:
        self._again.discard(again)
        self._on_settled()

    async def _write(
        self,
        spec: HandlerSpec,
        message: Message,
        outcome: Outcome,
        duration_ms: float,
        first_error: BaseException | None = None,
    ) -> None:
        """Record the outcome, retrying through database trouble; `first_error`: how its batch failed."""
        if isinstance(outcome, Abandoned) and outcome.why == "lease_lost":
            log.warning("job.abandoned", reason="lease_lost", duration_ms=duration_ms)
            return
        for attempt in range(1, SETTLE_TRIES + 1):
            try:
                if first_error is not None:  # handled as if this try had failed so
                    raise first_error  # noqa: TRY301  (the same handling as a failed try)
                async with self.pool.connection(timeout=5) as conn:
                    ours = await self._record(conn, spec, message, outcome)
            except RETRIED as exc:
                first_error = None
                if pooler_misconfigured(exc):
                    self._trouble.stop_for_pooler(exc)
                    return
                log.warning("job.settle_failed", error=one_line(exc), tries=attempt)
                await self._trouble.purge()
                await asyncio.sleep(retry_delay(attempt, 5.0))
                continue
            except Exception as exc:
                first_error = None
                instead = unrecorded(spec, message, outcome, exc)
                if instead is not None:  # a success that cannot be recorded as one: record this
                    log.warning("job.settle_refused", error=one_line(exc), instead=type(instead).__name__)
                    outcome = instead
                    continue
                # Not transient (a dropped queue table): the message reappears after its visibility timeout.
                log.exception("job.settle_failed", error=one_line(exc), tries=attempt, transient=False)
                return
            self._done(message, outcome, ours, duration_ms)
            return
        log.error("job.settle_abandoned", note="the message reappears after its visibility timeout")

    async def _record(  # noqa: PLR0911  (one return per outcome)
        self, conn: psycopg.AsyncConnection[Any], spec: HandlerSpec, message: Message, outcome: Outcome
    ) -> bool:
        """One try at writing the outcome; True if the delivery was still ours."""
        match outcome:
            case Succeeded(result=result, handoffs=()):
                return await settles.ack(conn, message, result, archive=spec.archive)
            case Succeeded(result=result, handoffs=handoffs):
                async with conn.transaction():  # the handoffs exist if and only if the ack happened
                    ours = await settles.ack(conn, message, result, archive=spec.archive)
                    for h in handoffs if ours else ():
                        sent: object
                        if self._keeps_job_rows(h.queue):
                            sent = await job_sends.asend_job(
                                conn, h.queue, h.body, h.delay_s, owner=h.owner, key=None
                            )
                        else:
                            sent = await pgmq.asend_if_exists(conn, h.queue, h.body, h.delay_s)
                        if sent is None:
                            raise UnknownQueue(f"ctx.enqueue: no queue named {h.queue!r}")
                return ours
            case RetryLater(delay=delay, error=error) | Deferred(delay=delay, error=error):
                deferral = isinstance(outcome, Deferred)  # not an attempt
                return await settles.hide(
                    conn, message, delay, outcome.status, error=error.as_dict(), deferral=deferral
                )
            case Waiting(job_id=job_id, fan_out=name):
                # The fan-out row is locked first, as the settle of its last child locks it: the
                # parent sleeps until the deadline only if that child has not ended meanwhile.
                async with conn.transaction():
                    state = await fanouts.lock(conn, job_id, name)
                    wake_in = 0.0
                    if state is not None and state.status == "open" and not state.complete:
                        wake_in = state.remaining_s + 1
                    # Waking up is not another attempt: counted as a deferral.
                    return await settles.hide(conn, message, wake_in, outcome.status, deferral=True)
            case DeadLetter():
                record = dead_letter_record(message, outcome, spec.max_attempts)
                return await settles.dead_letter(conn, message, record)
            case Cancelled(error=error):  # deleted (never retried), fenced like an ack
                return await settles.cancelled(conn, message, error.as_dict())
            case Abandoned():
                held = [(message.msg_id, message.read_ct)]
                released = await deliveries.release(
                    conn, message.queue, held, job_rows=message.job_id is not None
                )
                return bool(released)

    def _done(self, message: Message, outcome: Outcome, ours: bool, duration_ms: float) -> None:
        """The settle log line and the webhook (bound here: a batched ack lands in the flusher's context)."""
        if not ours:
            self._bound(message).warning(
                "lease.lost", note="the message was delivered again after its lease ran out; not settled"
            )
            return
        if self._log_successes or not isinstance(outcome, Succeeded):
            log_at = getattr(self._bound(message), outcome.level)
            log_at(outcome.event, **outcome.log_fields(), duration_ms=duration_ms)
        self._hooks.send(webhooks.settled(message, outcome))
        for observer in self._observers:
            try:
                observer(message, outcome, duration_ms)
            except Exception as exc:  # an observer's bug must not undo or stop a settle
                log.exception("settle.observer_failed", error=one_line(exc))

    def _bound(self, message: Message) -> Any:
        return self._log.bind(queue=message.queue, msg_id=message.msg_id, attempt=message.attempt)


def bind_delivery(message: Message) -> None:
    """Name the delivery in every log line of the current context (a task's own copy)."""
    structlog.contextvars.bind_contextvars(
        queue=message.queue, msg_id=message.msg_id, attempt=message.attempt
    )
