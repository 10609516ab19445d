"""Run one delivery's handler: validate the payload, call it within its timeout, name the outcome."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

import psycopg
from pydantic import ValidationError

from db import storable
from db.errors import one_line
from queues.contract import describe_validation_error
from queues.errors import InvalidPayload
from worker.cancels import JobCancelled
from worker.context import Context
from worker.errors import (
    DEFAULT_RATE_LIMIT_DELAY_S,
    MAX_DEFERRALS,
    InvalidResult,
    Permanent,
    RateLimited,
    Retry,
)
from worker.fanout import WaitForChildren
from worker.outcome import Cancelled, DeadLetter, Deferred, ErrorInfo, Outcome, RetryLater, Succeeded, Waiting
from worker.registry import HandlerSpec
from worker.store.deliveries import Message
from worker.threads import in_thread

# A value the settle cannot store: Postgres refused it (a NUL in a result), or encoding it raised.
VALUE_ERRORS = (psycopg.DataError, TypeError, ValueError, RecursionError, OverflowError)


class AttemptTimeout(TimeoutError):
    """The handler ran past its timeout."""


def parse_payload(task: HandlerSpec, body: Any) -> Any:
    """The handler's argument: its pydantic model when annotated, else the JSON object."""
    if not isinstance(body, dict):
        raise InvalidPayload(f"message on {task.queue!r} is not a JSON object (got {type(body).__name__})")
    if task.model is None:
        return body
    try:
        return task.model.model_validate(body)
    except ValidationError as exc:
        raise InvalidPayload(
            f"message on {task.queue!r} does not match {describe_validation_error(exc)}"
        ) from exc


async def execute(task: HandlerSpec, message: Message, ctx: Context, executor: Executor | None) -> Outcome:
    """Run the handler once and classify what happened."""
    try:
        payload = parse_payload(task, message.body)
    except InvalidPayload as exc:
        return DeadLetter("invalid_payload", ErrorInfo.of(exc))
    try:
        result = await _call(task, payload, ctx, executor)
    except asyncio.CancelledError:
        raise  # the runner decides: shutdown or lease lost
    except WaitForChildren as wait:
        return Waiting(wait.job_id, wait.name)
    except JobCancelled:  # ctx.raise_if_cancelled(), or a step that would have started
        return Cancelled.of("requested")
    except (Permanent, InvalidResult, InvalidPayload) as exc:  # no retry can help: dead-letter now
        return DeadLetter(_reason(exc), ErrorInfo.of(exc))
    except Exception as exc:
        return failed(task, message, exc)
    return _succeeded(result)


def _reason(exc: Exception) -> str:
    """The dead-letter reason of an exception that no retry can help."""
    if isinstance(exc, Permanent):
        return "permanent"
    if isinstance(exc, InvalidResult):  # a step's output or a progress report that may not be stored
        return "invalid_result"
    return "invalid_payload"  # ctx.enqueue or ctx.fan_out refused a payload


def _succeeded(result: Any) -> Succeeded | DeadLetter:
    """The handler returned: a success with its result as JSON types, unless it may not be stored.

    Deterministic: the same handler returns the same value again. Found at the ack instead, it
    would fail the whole batch the delivery was acked with, again on every try.
    """
    if result is None:
        return Succeeded(None)
    try:
        return Succeeded(storable.jsonable(result))
    except storable.Unstorable as exc:
        problem = InvalidResult(f"the handler returned what may not be stored: {exc.describe('result')}")
        return DeadLetter("invalid_result", ErrorInfo.of(problem))


def failed(task: HandlerSpec, message: Message, exc: BaseException) -> RetryLater | Deferred | DeadLetter:
    """A failed attempt: retry after backoff (or the Retry's delay), or dead-letter when spent.

    RateLimited is no failure: the delivery is deferred, not counted (up to MAX_DEFERRALS). Without
    job rows there is nowhere to count deferrals, so there it is a failed attempt like any other.
    """
    error = ErrorInfo.of(exc)
    if isinstance(exc, RateLimited) and task.job_rows and message.deferrals < MAX_DEFERRALS:
        return Deferred(DEFAULT_RATE_LIMIT_DELAY_S if exc.delay is None else exc.delay, error)
    if message.attempt >= task.max_attempts:
        return DeadLetter("max_attempts", error)
    if isinstance(exc, Retry) and exc.delay is not None:
        return RetryLater(max(0.0, exc.delay), error)
    return RetryLater(task.backoff.delay(message.attempt), error)


async def _call(task: HandlerSpec, payload: Any, ctx: Context, executor: Executor | None) -> Any:
    # A `def` handler runs in a thread: blocking work (OCR, sync HTTP) stays off the loop.
    call = task.fn(payload, ctx) if task.is_async else in_thread(executor, task.fn, payload, ctx)
    if task.timeout is None:
        return await call  # no timeout context to set up and tear down per message
    limit = asyncio.timeout(task.timeout)
    try:
        async with limit:
            return await call
    except TimeoutError:
        if not limit.expired():
            raise  # the handler's own TimeoutError: an ordinary failure
        # A thread cannot be killed: a sync handler past its timeout keeps its pool thread until
        # it returns, but its result is ignored and the message is retried.
        raise AttemptTimeout(f"handler ran past its timeout of {task.timeout:g}s") from None


def unrecorded(spec: HandlerSpec, message: Message, outcome: Outcome, exc: Exception) -> Outcome | None:
    """What to record instead of a success whose settle failed for good; None: nothing better.

    Postgres refused its result (a NUL the result check missed), or encoding it raised: dead-letter
    `invalid_result`, as the check does (the same handler returns the same value again). Anything
    else (a handoff's queue gone, our own bug): a failed attempt, retried with the error recorded.
    """
    if not isinstance(outcome, Succeeded):
        return None
    if isinstance(exc, VALUE_ERRORS):
        refused = InvalidResult(f"the result cannot be stored ({type(exc).__name__}: {one_line(exc)})")
        refused.__cause__ = exc
        return DeadLetter("invalid_result", ErrorInfo.of(refused))
    return failed(spec, message, exc)


__all__ = ["AttemptTimeout", "execute", "failed", "parse_payload", "unrecorded"]
