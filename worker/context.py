"""What a handler gets besides its payload."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, cast
from uuid import UUID

import httpx
import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic_settings import BaseSettings

from queues.artifacts import aput_artifact
from queues.contract import QueueRef, queue_of
from queues.enqueue import delay_seconds, encode, owner_id, prepare
from queues.errors import InvalidArtifact, UnknownQueue
from queues.pgmq import aqueue_exists
from worker.cancels import CancelFlag
from worker.errors import Permanent, WorkerError
from worker.fanout import DEFAULT_DEADLINE, FanIn
from worker.fanout import policy as fan_out_policy
from worker.limits import Limit, hold
from worker.outcome import Handoff, Handoffs
from worker.progress import ProgressReporter, Report, check_report
from worker.running_marks import RunningMark
from worker.settings import WorkerSettings
from worker.steps import Steps, as_json
from worker.threads import in_thread

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=BaseSettings)


class Runtime:
    """What one worker process shares with every delivery's context (made once, in its lifespan)."""

    __slots__ = ("_configs", "_http", "executor", "keeps_job_rows", "loop", "pool", "settings", "standalone")

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool | None,
        executor: Executor | None,
        loop: asyncio.AbstractEventLoop | None,
        settings: WorkerSettings,
        keeps_job_rows: Callable[[str], bool],
        http: httpx.AsyncClient | None = None,
        standalone: bool = False,
    ) -> None:
        self.pool = pool  # None only standalone
        self.executor = executor  # the handler threads (None only standalone: asyncio's default pool)
        self.loop = loop
        self.settings = settings
        self._http = http  # made on first use (building its TLS context costs ~40 ms of CPU)
        self.keeps_job_rows = keeps_job_rows  # whether a queue's messages come with job rows
        # Standalone: a handler called outside a worker (Context.for_test): steps run without being
        # stored, limits do not hold, progress goes to the test's reporter, if any.
        self.standalone = standalone
        self._configs: dict[type[BaseSettings], BaseSettings] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        """One client for every handler of the process, so its connections are reused."""
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def aclose(self) -> None:
        """Close the shared client, if anything used it."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def config(self, cls: type[C]) -> C:
        """The process's instance of a settings class, built from the environment the first time."""
        found = self._configs.get(cls)
        if found is None:
            found = self._configs[cls] = cls()
        return cast(C, found)  # keyed by its own class


class Reporter(Protocol):
    """Where `ctx.progress` goes: the job row's coalescing writer, or a test's recorder."""

    async def report(self, report: Report) -> None:
        """Take one progress report."""


@dataclass(frozen=True, slots=True)
class JobRow:
    """The delivery's job row: its steps and its progress writer (a queue with job rows only)."""

    job_id: UUID
    steps: Steps
    reporter: ProgressReporter
    mark: RunningMark | None = None  # makes the row say `running` before an artifact hangs off it


@dataclass(frozen=True, slots=True)
class Context:
    """The delivery a handler is working on, and tools bound to it.

    Built by the worker for each delivery (worker.attempt), or by `Context.for_test` for a
    handler unit test. `job` is None when the queue runs without job rows (`job_rows=False`):
    then steps, fan-out and artifacts refuse (Permanent) and progress goes nowhere.
    """

    queue: str
    msg_id: int
    attempt: int  # 1 on the first delivery; pgmq's read_ct (see README: what an attempt is)
    max_attempts: int
    enqueued_at: datetime
    log: structlog.stdlib.BoundLogger
    runtime: Runtime = field(repr=False)
    job: JobRow | None = field(repr=False)
    # What ctx.enqueue asked for: the attempt that made this context owns it, and sends it with its ack.
    handoffs: Handoffs = field(repr=False)
    reporter: Reporter | None = field(default=None, repr=False)  # the job row's, or a test's
    cancel: CancelFlag | None = field(default=None, repr=False)  # set when the job is cancelled
    # The tick this message was sent for (timezone-aware, in the schedule's timezone), for a
    # message a schedule sent (worker.schedules); None for any other.
    scheduled_at: datetime | None = None

    @classmethod
    def for_test(
        cls,
        queue: str = "test",
        *,
        msg_id: int = 1,
        attempt: int = 1,
        max_attempts: int = 5,
        reporter: Reporter | None = None,
        settings: WorkerSettings | None = None,
        http: httpx.AsyncClient | None = None,
        cancel: CancelFlag | None = None,
        scheduled_at: datetime | None = None,
    ) -> Context:
        """A context for calling a handler directly in a unit test, without a worker or a database.

        `ctx.step` runs its function (nothing stored), `ctx.limit` does not hold, `ctx.progress`
        goes to `reporter` (anything with `async def report(self, report)`), `ctx.enqueue`
        gathers in `ctx.handoffs` (see `ctx.handoffs.sent`); fan-out and artifacts need a worker.
        `cancel`: a `CancelFlag` the test sets to see how the handler takes a cancel.
        `scheduled_at`: the tick, as a scheduled message's handler sees it (worker.schedules).
        """
        runtime = Runtime(
            pool=None,
            executor=None,
            loop=None,
            settings=settings or WorkerSettings(),
            http=http,
            keeps_job_rows=lambda _queue: True,
            standalone=True,
        )
        return cls(
            queue=queue,
            msg_id=msg_id,
            attempt=attempt,
            max_attempts=max_attempts,
            enqueued_at=datetime.now(UTC),
            log=structlog.get_logger().bind(queue=queue, msg_id=msg_id, attempt=attempt),
            runtime=runtime,
            job=None,
            handoffs=Handoffs(),
            reporter=reporter,
            cancel=cancel,
            scheduled_at=scheduled_at,
        )

    @property
    def settings(self) -> WorkerSettings:
        """The worker process's settings."""
        return self.runtime.settings

    @property
    def http(self) -> httpx.AsyncClient:
        """The process's one HTTP client: share its connections instead of opening a client per job."""
        return self.runtime.http

    def config(self, cls: type[C]) -> C:
        """The process's instance of your settings class (pydantic-settings), read once."""
        return self.runtime.config(cls)

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same message: use it to make side effects idempotent."""
        return f"{self.queue}:{self.msg_id}"

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled the job: stop (return, or `raise_if_cancelled()`), clean up.

        The worker notices a cancel within about a heartbeat interval; an `async def` handler is
        then cancelled after `PGMQ_WORKER_CANCEL_GRACE`, a `def` handler runs until it looks.
        """
        return self.cancel is not None and self.cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled: it ends `cancelled`, never retried."""
        if self.cancel is not None:
            self.cancel.raise_if_set()

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the message instead of retrying."""
        return self.attempt >= self.max_attempts

    async def to_thread(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking work (OCR, a sync SDK) off the event loop, keeping log context."""
        return await in_thread(self.runtime.executor, fn, *args, **kwargs)

    async def progress(
        self, percent: float, *, step: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        """Report progress (0-100), the current step and a JSON detail to the job row.

        Writes are coalesced to a couple per second per job; the last report is never lost.
        """
        report = check_report(percent, step, detail)
        if self.reporter is not None:
            await self.reporter.report(report)

    def progress_sync(
        self, percent: float, *, step: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        """`progress` for `def` handlers, which run in a thread."""
        report = check_report(percent, step, detail)
        if self.reporter is None:
            return
        if self.runtime.loop is None:  # standalone: called from the test's own thread
            asyncio.run(self.reporter.report(report))
            return
        asyncio.run_coroutine_threadsafe(self.reporter.report(report), self.runtime.loop).result()

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109  (the step's own limit, enforced inside)
        max_attempts: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `fn(*args, **kwargs)` as the named step of this job, at most once to completion.

        A step that finished in an earlier delivery returns its stored output without running.
        `fn` may be async or plain (a plain one runs in the handler thread pool). `timeout`:
        seconds for this step (past it the attempt fails and is retried); `max_attempts`: how
        many times this step may start before the job is dead-lettered. The output must be a
        JSON value (or a pydantic model, stored as its JSON); it comes back as JSON gives it.
        Progress and the step name are reported automatically (percentages when the handler
        declares `steps=[...]`).
        """
        if self.job is not None:
            return await self.job.steps.run(
                name, fn, args, kwargs, limit_s=timeout, max_attempts=max_attempts
            )
        if not self.runtime.standalone:
            raise Permanent(self._without_job_rows("ctx.step"))
        if self.cancel is not None:
            self.cancel.raise_if_set(f"step {name!r} not started")
        result = fn(*args, **kwargs)  # a unit test: run it, nothing stored
        return as_json(await result if inspect.isawaitable(result) else result, name)

    @contextlib.asynccontextmanager
    async def limit(self, limit: Limit) -> AsyncIterator[None]:
        """Hold a slot of a shared limit for the block (waits for one; see worker.limits).

        Without a database (a direct call in a test) the block runs unlimited.
        """
        if self.runtime.pool is None:  # standalone
            yield
            return
        async with hold(self.runtime.pool, limit):
            yield

    async def fan_out(
        self,
        name: str,
        queue: QueueRef,
        payloads: Sequence[Any],
        *,
        timeout: float | timedelta | None = None,  # noqa: ASYNC109  (each child's, not this call's)
        max_attempts: int | None = None,
        max_running: int | None = None,
        deadline: float | timedelta = DEFAULT_DEADLINE,
        min_succeeded: int | float | None = None,
    ) -> FanIn:
        """Run one child job per payload on `queue` and return how each ended (see worker.fanout).

        The first time, the children are sent and this delivery ends (the parent waits, costing
        nothing, until the last child or the `deadline` wakes it); the handler then runs again
        and, with the earlier steps resumed, gets the `FanIn`. `timeout`/`max_attempts`: each
        child's, overriding its handler's; `max_running`: children running at once;
        `deadline`: after it, unfinished children are cancelled; `min_succeeded`: a count or a
        share (0.0-1.0) that must succeed (default all), else FanOutFailed dead-letters the job.
        """
        rules = fan_out_policy(
            len(payloads),
            timeout=timeout,
            max_attempts=max_attempts,
            max_running=max_running,
            deadline=deadline,
            min_succeeded=min_succeeded,
        )
        prepared = [prepare(queue, p) for p in payloads]  # InvalidPayload before anything is sent
        job, pool = self._job_row("ctx.fan_out")
        child_queue = prepared[0][0]
        if not self.runtime.keeps_job_rows(child_queue):  # a child without a job row could never report back
            raise Permanent(f"ctx.fan_out: queue {child_queue!r} runs without job rows (job_rows=False)")
        async with pool.connection() as conn:
            if not await aqueue_exists(conn, child_queue):
                raise UnknownQueue(f"ctx.fan_out: no queue named {child_queue!r}")
        result = await job.steps.fan_out(
            name,
            parent_queue=self.queue,
            parent_msg_id=self.msg_id,
            child_queue=child_queue,
            bodies=[body for _, body in prepared],
            policy=rules,
        )
        result.check(min_succeeded)
        return result

    def enqueue(
        self,
        queue: QueueRef,
        payload: Any,
        *,
        delay: float | timedelta | None = None,
        owner: UUID | str | None = None,
    ) -> None:
        """Hand a message to another queue, sent only if this delivery is acked, in the same transaction.

        The payload is validated now (InvalidPayload); a queue that does not exist fails the attempt
        when the handler returns. A handler that raises sends nothing.
        """
        name, body = queue_of(queue), encode(queue, payload)
        self.handoffs.add(Handoff(name, body, delay_seconds(delay), owner_id(owner)))

    async def artifact(self, name: str, data: bytes, content_type: str) -> str:
        """Store a file this job made (audio, an image) in Postgres; the URL path the web serves it at.

        `GET /jobs/{job_id}/artifacts/{name}` serves it to whoever may see the job. Storing a name
        again replaces the file, so a step that runs twice leaves one. A bad name or type, or more
        than 10 MB (queues.artifacts.MAX_ARTIFACT_BYTES), is Permanent: no retry makes it fit.
        """
        job, pool = self._job_row("ctx.artifact")
        if job.mark is not None:
            await job.mark.ensure()
        try:
            async with pool.connection() as conn:
                return await aput_artifact(conn, job.job_id, name, data, content_type)
        except InvalidArtifact as exc:
            raise Permanent(str(exc)) from exc

    def _job_row(self, what: str) -> tuple[JobRow, AsyncConnectionPool]:
        """The job row and the pool `what` needs: WorkerError standalone, Permanent without job rows."""
        if self.runtime.standalone:
            raise WorkerError(f"{what} needs a job row: it runs only in a worker's delivery")
        if self.job is None or self.runtime.pool is None:
            raise Permanent(self._without_job_rows(what))
        return self.job, self.runtime.pool

    def _without_job_rows(self, what: str) -> str:
        return f"{what} needs a job row, and queue {self.queue!r} runs without them (job_rows=False)"
