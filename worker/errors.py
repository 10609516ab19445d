"""What a handler raises to steer its message, and what the worker reports.

Defined here:

WorkerError
 ├─ Retry(delay, reason)   try again after `delay` (still counts as an attempt)
 │   └─ RateLimited         the provider said 429: come back later, not counted as an attempt
 ├─ Permanent(reason)      never retry: dead-letter now
 │   └─ FanOutFailed        (worker.fanout) too few children succeeded
 ├─ InvalidResult          a result, step output or progress report that may not be stored
 ├─ HandlerRegistrationError  a @handler declaration that cannot work
 │   └─ ScheduleError       a schedule() declaration that cannot work (cron, timezone, payload)
 ├─ PoolerMisconfigured    an undeclared transaction pooler (seen at start, or prepared statements fail)
 ├─ MetricsPortUnavailable the metrics endpoint cannot listen where the settings say
 └─ SideTaskFailed         lease renewal, the listener, the ack flusher...: died, so the worker stopped

Raised by the worker elsewhere, each beside what raises it:

TimeoutError
 ├─ AttemptTimeout         (worker.execute) the handler ran past its timeout: a failed attempt
 └─ StepTimeout            (worker.steps) a step ran past its own timeout: a failed attempt
ValueError
 └─ WebhookRefused         (worker.webhooks) a webhook URL that may not be called: not sent
BaseException
 ├─ WaitForChildren        (worker.fanout) not an error: ctx.fan_out ends the delivery to wait
 └─ JobCancelled           (worker.cancels) the job was cancelled: ctx.raise_if_cancelled, ctx.step

From queues (queues.errors has the whole tree):

QueueError
 ├─ InvalidPayload         the message is not a JSON object or fails the handler's model: dead-letter
 └─ UnknownQueue           no handler, or no pgmq queue, by that name
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import httpx

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


class RateLimited(Retry):
    """The provider said "too many requests": come back after `delay` seconds.

    Not a failed attempt: the delivery is deferred and does not count toward max_attempts (up to
    MAX_DEFERRALS deferrals of one job; past that they count like any retry).
    """

    def __init__(self, delay: float | timedelta | None = None, reason: str | None = None) -> None:
        super().__init__(DEFAULT_RATE_LIMIT_DELAY_S if delay is None else delay, reason or "rate limited")

    @classmethod
    def from_response(cls, response: httpx.Response, reason: str | None = None) -> RateLimited:
        """From an HTTP 429/503 response: its Retry-After (seconds or an HTTP date), if any."""
        return cls(retry_after(response.headers.get("retry-after")), reason or f"HTTP {response.status_code}")


DEFAULT_RATE_LIMIT_DELAY_S = 30.0
MAX_RATE_LIMIT_DELAY_S = 3600.0
MAX_DEFERRALS = 50


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header value (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(MAX_RATE_LIMIT_DELAY_S, max(0.0, seconds))


class Permanent(WorkerError):
    """The handler failed in a way no retry can fix."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)


class InvalidResult(WorkerError, ValueError):
    """What the handler gave us to store (its result, a step's output, a progress report) may not be stored.

    See db.storable for the rule. Raised at the call (ctx.progress, ctx.step); out of a handler
    it dead-letters the delivery at once (reason `invalid_result`): the same value fails again.
    """


class HandlerRegistrationError(WorkerError, TypeError):
    """This @handler declaration cannot work."""


class ScheduleError(HandlerRegistrationError):
    """This schedule() declaration cannot work."""


class PoolerMisconfigured(WorkerError):
    """DATABASE_URL goes through a transaction pooler: set PGMQ_WORKER_POOLER=transaction."""


class MetricsPortUnavailable(WorkerError):
    """The metrics endpoint cannot listen on PGMQ_WORKER_METRICS_HOST:PGMQ_WORKER_METRICS_PORT."""


class SideTaskFailed(WorkerError):
    """A side task of the worker died unexpectedly: the worker released its messages and stopped."""


__all__ = [
    "HandlerRegistrationError",
    "InvalidPayload",
    "InvalidResult",
    "MetricsPortUnavailable",
    "Permanent",
    "PoolerMisconfigured",
    "RateLimited",
    "Retry",
    "ScheduleError",
    "SideTaskFailed",
    "UnknownQueue",
    "WorkerError",
]
