"""What a handler raises to steer its message, and what the worker reports.

WorkerError
 ├─ Retry(delay, reason)   try again after `delay` (still counts as an attempt)
 ├─ Permanent(reason)      never retry: dead-letter now
 ├─ HandlerRegistrationError  a @handler declaration that cannot work
 └─ PoolerMisconfigured    prepared statements fail: an undeclared transaction pooler
QueueError (from queues)
 ├─ InvalidPayload         the message is not a JSON object or fails the handler's model: dead-letter
 └─ UnknownQueue           no handler, or no pgmq queue, by that name
"""

from __future__ import annotations

from datetime import timedelta

from queues.errors import InvalidPayload, UnknownQueue


class WorkerError(Exception):
    """A worker problem."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Retry(WorkerError):
    """The handler asked to be retried later."""

    def __init__(self, delay: float | timedelta | None = None, reason: str | None = None) -> None:
        self.delay: float | None = delay.total_seconds() if isinstance(delay, timedelta) else delay
        super().__init__(reason)


class Permanent(WorkerError):
    """The handler failed in a way no retry can fix."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)


class HandlerRegistrationError(WorkerError, TypeError):
    """This @handler declaration cannot work."""


class PoolerMisconfigured(WorkerError):
    """DATABASE_URL goes through a transaction pooler: set PGMQ_WORKER_POOLER=transaction."""


__all__ = [
    "HandlerRegistrationError",
    "InvalidPayload",
    "Permanent",
    "PoolerMisconfigured",
    "Retry",
    "UnknownQueue",
    "WorkerError",
]
