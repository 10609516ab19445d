"""What a handler gets besides its payload."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import structlog
from psycopg_pool import AsyncConnectionPool

from queues.artifacts import aput_artifact
from queues.contract import QueueRef, queue_of
from queues.enqueue import delay_seconds, encode, owner_id, prepare
from queues.errors import InvalidArtifact, UnknownQueue
from queues.pgmq import aqueue_exists
from worker.errors import Permanent, WorkerError
from worker.fanout import DEFAULT_DEADLINE, FanIn
from worker.fanout import policy as fan_out_policy
from worker.limits import Limit, hold
from worker.outcome import Handoff
from worker.progress import ProgressReporter, check_report
from worker.steps import Steps, as_json

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Context:
    """The delivery a handler is working on, and tools bound to it."""

    queue: str
    """The queue the message came from."""
    msg_id: int
    """pgmq's message id, unique within the queue."""
    attempt: int
    """1 on the first delivery: pgmq's `read_ct`, less the deliveries deferred by `RateLimited`."""
    max_attempts: int
    """The handler's `max_attempts`: deliveries before the message is dead-lettered."""
    enqueued_at: datetime
    """When the message was sent."""
    log: structlog.stdlib.BoundLogger
    """A structlog logger bound to `queue`, `msg_id` and `attempt`."""
    # The worker's handler pool, not asyncio's default one: asyncio.run waits for the default
    # pool's threads at exit, so a stuck thread there would keep a stopping worker alive.
    executor: Executor | None = field(default=None, repr=False)
    reporter: ProgressReporter | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    steps: Steps | None = field(default=None, repr=False)
    pool: AsyncConnectionPool | None = field(default=None, repr=False)
    # The queues this worker runs without job rows (`@handler(..., job_rows=False)`).
    no_job_rows: frozenset[str] = field(default=frozenset(), repr=False)
    outbox: list[Handoff] = field(default_factory=list, repr=False)

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same message: use it to make side effects idempotent."""
        return f"{self.queue}:{self.msg_id}"

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the message instead of retrying."""
        return self.attempt >= self.max_attempts

    async def to_thread(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking work (OCR, a sync SDK) off the event loop, keeping log context."""
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

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
        if self.reporter is None or self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.reporter.report(report), self.loop).result()

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
        if self.steps is None and self.pool is not None:
            raise Permanent(self._without_job_rows("ctx.step"))
        if self.steps is None:  # no job row (a direct call in a test): run it, no persistence
            result = fn(*args, **kwargs)
            return as_json(await result if inspect.isawaitable(result) else result, name)
        return await self.steps.run(name, fn, args, kwargs, limit_s=timeout, max_attempts=max_attempts)

    @contextlib.asynccontextmanager
    async def limit(self, limit: Limit) -> AsyncIterator[None]:
        """Hold a slot of a shared limit for the block (waits for one; see worker.limits).

        Without a database (a direct call in a test) the block runs unlimited.
        """
        if self.pool is None:
            yield
            return
        async with hold(self.pool, limit):
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
        if self.steps is None and self.pool is not None:
            raise Permanent(self._without_job_rows("ctx.fan_out"))
        if self.steps is None or self.pool is None:
            raise WorkerError("ctx.fan_out needs a job row: it runs only in a worker's delivery")
        child_queue = prepared[0][0]
        if child_queue in self.no_job_rows:  # a child without a job row could never report back
            raise Permanent(f"ctx.fan_out: queue {child_queue!r} runs without job rows (job_rows=False)")
        async with self.pool.connection() as conn:
            if not await aqueue_exists(conn, child_queue):
                raise UnknownQueue(f"ctx.fan_out: no queue named {child_queue!r}")
        result = await self.steps.fan_out(
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
        self.outbox.append(Handoff(name, body, delay_seconds(delay), owner_id(owner)))

    async def artifact(self, name: str, data: bytes, content_type: str) -> str:
        """Store a file this job made (audio, an image) in Postgres; the URL path the web serves it at.

        `GET /jobs/{job_id}/artifacts/{name}` serves it to whoever may see the job. Storing a name
        again replaces the file, so a step that runs twice leaves one. A bad name or type, or more
        than 10 MB (queues.artifacts.MAX_ARTIFACT_BYTES), is Permanent: no retry makes it fit.
        """
        if self.steps is None and self.pool is not None:
            raise Permanent(self._without_job_rows("ctx.artifact"))
        if self.steps is None or self.pool is None:
            raise WorkerError("ctx.artifact needs a job row: it runs only in a worker's delivery")
        try:
            async with self.pool.connection() as conn:
                return await aput_artifact(conn, self.steps.job_id, name, data, content_type)
        except InvalidArtifact as exc:
            raise Permanent(str(exc)) from exc

    def _without_job_rows(self, what: str) -> str:
        return f"{what} needs a job row, and queue {self.queue!r} runs without them (job_rows=False)"
