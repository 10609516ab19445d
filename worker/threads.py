"""The pool `def` handlers run in, counting the calls still running."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class HandlerThreads(ThreadPoolExecutor):
    """A thread pool that knows how many submitted calls have not returned yet.

    A thread cannot be cancelled: after a drain, `busy` says whether a handler still runs.
    """

    def __init__(self, size: int) -> None:
        super().__init__(size, thread_name_prefix="handler")
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
