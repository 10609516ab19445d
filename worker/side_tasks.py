"""The worker's side tasks, watched together: one that dies unexpectedly stops the worker.

Lease renewal, the listener, the ack flusher and each webhook delivery run beside the read loop.
A worker must not run on without one of them (a dead lease renewer means silent duplicates, a
dead ack flusher a worker that never acks again), so one mechanism watches them all, as
procrastinate's `_monitor_side_tasks` does: a done-callback on each task, not a try/except in
each. The first failure is logged as `worker.side_task_failed` with its traceback and handed to
`on_failure`, which stops the worker (releasing what it holds); `Worker.run` then raises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from db.logs import get_logger
from worker.errors import SideTaskFailed

log = get_logger()
STOP_RECANCEL_S = 1.0  # how long stop() waits before cancelling a task again


class SideTasks:
    """Starts the worker's long-running side tasks and watches those and any short ones."""

    def __init__(self, stopping: asyncio.Event, on_failure: Callable[[SideTaskFailed], object]) -> None:
        self._worker_stopping = stopping  # once set, a lasting task may return (the loop stops them)
        self._on_failure = on_failure
        self._long: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.failure: SideTaskFailed | None = None

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` for the worker's life: raising before stop(), or returning before the worker
        stops, is a failure."""
        task = asyncio.create_task(coro, name=name)
        self._long.append(task)
        task.add_done_callback(self._long_ended)
        return task

    def watch(self, task: asyncio.Task[Any], *, lasting: bool = False) -> None:
        """Watch a task someone else stops: a short one (one webhook delivery) may end, never raise.

        lasting: it runs for the worker's life (its owner ends it after stop()), as a started one.
        """
        task.add_done_callback(self._long_ended if lasting else self._short_ended)

    async def stop(self) -> None:
        """Cancel the long-running tasks and wait for them (their errors now are no failure)."""
        self._stopping = True
        pending = {task for task in self._long if not task.done()}
        while pending:
            # Cancelled again while it lasts: a cancel that lands as an awaited call completes can
            # be swallowed (Python 3.11's wait_for, a pool checkout), and the task sleeps on.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL_S)

    def _long_ended(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            self._failed(task, asyncio.CancelledError("cancelled while the worker was running"))
        elif (exc := task.exception()) is not None:
            self._failed(task, exc)
        elif not self._worker_stopping.is_set():
            self._failed(task, RuntimeError("ended while the worker was running"))

    def _short_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(task, exc)

    def _failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        name = task.get_name()
        log.error("worker.side_task_failed", task=name, error=repr(exc)[:500], exc_info=exc)
        if self.failure is not None:  # already stopping for the first one
            return
        self.failure = SideTaskFailed(
            f"the worker's {name} task failed ({repr(exc)[:500]}); "
            "the worker released its messages and stopped"
        )
        self._on_failure(self.failure)
