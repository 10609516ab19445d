"""What a handler gets besides its payload."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import structlog

from worker.progress import ProgressReporter, check_report

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Context:
    """The delivery a handler is working on, and tools bound to it."""

    queue: str
    msg_id: int
    attempt: int  # 1 on the first delivery; pgmq's read_ct (see README: what an attempt is)
    max_attempts: int
    enqueued_at: datetime
    log: structlog.stdlib.BoundLogger
    # The worker's handler pool, not asyncio's default one: asyncio.run waits for the default
    # pool's threads at exit, so a stuck thread there would keep a stopping worker alive.
    executor: Executor | None = field(default=None, repr=False)
    reporter: ProgressReporter | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

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
