"""The pool `def` handlers run in, counting the calls still running, and the one way to call into it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class HandlerThreads(ThreadPoolExecutor):
    """A thread pool that knows how many submitted calls have not returned yet.

    A thread cannot be cancelled: after a drain, `busy` says whether a handler still runs.
    """

    def __init__(self, size: int) -> None:
        super().__init__(size, thread_name_prefix="handler")
        self.size = size
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Calls submitted and not yet returned."""
        with self._lock:
            return self._busy

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Submit, counting the call until it returns."""
        with self._lock:
            self._busy += 1

        def counted() -> R:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        try:
            return super().submit(counted)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise


def in_thread(
    executor: Executor | None, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> asyncio.Future[R]:
    """Run `fn` in the handler threads, with the caller's log context (queue, msg_id) bound in the thread.

    The worker's handler pool, not asyncio's default one (None only outside a worker): asyncio.run
    waits for the default pool's threads at exit, so a stuck thread there would keep a stopping
    worker alive. The one way the worker runs anything in a thread: `def` handlers, plain step
    functions and `ctx.to_thread`.
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(executor, call)
