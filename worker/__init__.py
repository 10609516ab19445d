"""The daemon runtime: `@handler`, `schedule`, `Context`, and the worker that runs them."""

from db.backoff import Backoff
from worker.context import Context
from worker.errors import InvalidPayload, Permanent, RateLimited, Retry, UnknownQueue, WorkerError
from worker.limits import Limit
from worker.registry import HandlerSpec, Registry, handler
from worker.schedules import Schedule, schedule

__all__ = [
    "Backoff",
    "Context",
    "HandlerSpec",
    "InvalidPayload",
    "Limit",
    "Permanent",
    "RateLimited",
    "Registry",
    "Retry",
    "Schedule",
    "UnknownQueue",
    "WorkerError",
    "handler",
    "schedule",
]
