"""The handler registry: `@handler(queue, ...)` ties a function to a queue and its policy.

`@handler` marks the function with its HandlerSpecs (`SPEC_ATTRIBUTE`: one per queue, as
`@handler` may be stacked to serve two queues with one function); a Registry is an
explicit object built from the modules that hold the marked functions
(`Registry.from_modules(["handlers"])`, what `--import` names), so nothing depends on which
module a test imported first. `@handler(..., registry=reg)` also adds it to `reg` at once (tests
defining handlers inline). The web process derives its catalog from the same registry, as plain
data (`Registry.queue_specs()`: queues never imports worker).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from db.backoff import Backoff
from db.durations import positive
from queues.catalog import QueueSpec, import_modules, marked, within
from queues.contract import Contract, QueueRef, describe_validation_error, queue_of
from worker.errors import HandlerRegistrationError, ScheduleError, UnknownQueue
from worker.schedules import SCHEDULES_ATTRIBUTE, Schedule

HandlerFn = Callable[[Any, Any], Any] | Callable[[Any, Any], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTRIBUTE = "__pgmq_handler__"  # where @handler leaves a function's HandlerSpecs (a tuple)
MIN_VISIBILITY_TIMEOUT_S = 2  # the lease is renewed at half of it: below this, renewals thrash
PRIORITIES = range(-100, 101)  # @handler(priority=N): higher is read first; 0 the default
MAX_QUEUE_CONCURRENCY = 1000  # the worker's own --concurrency cap


def seconds(value: float | timedelta, what: str) -> float:
    """Normalise a duration given as seconds or a timedelta; it must be positive."""
    try:
        return positive(value, what).total_seconds()
    except ValueError as exc:
        raise HandlerRegistrationError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler: its function, its queue and the policy its deliveries run under."""

    queue: str
    fn: HandlerFn
    model: type[BaseModel] | None
    is_async: bool
    max_attempts: int
    visibility_timeout: float
    timeout: float | None
    backoff: Backoff
    archive: bool
    name: str = field(default="")
    steps: tuple[str, ...] = ()  # declared step names, in order: progress percentages
    job_rows: bool = True  # False: no pgmq_worker.jobs row is created or updated for this queue
    summary: str = ""  # the first line of the handler's docstring (the web's queue list)
    partitioned: bool = False  # the worker creates the queue with pgmq.create_partitioned (pg_partman)
    priority: int = 0  # higher-priority queues are read first (worker/reading_order.py)
    concurrency: int | None = None  # at most this many of the queue's deliveries run at once per process

    def queue_spec(self) -> QueueSpec:
        """What a web process needs to know of this queue, as plain data (see queues.catalog)."""
        return QueueSpec(self.queue, self.model, self.summary, self.steps, self.job_rows)

    @property
    def read_vt(self) -> int:
        """The whole seconds pgmq.read hides a message for (pgmq takes integers)."""
        return max(MIN_VISIBILITY_TIMEOUT_S, round(self.visibility_timeout))


class Registry:
    """Queue name -> HandlerSpec (one handler per queue), and the schedules of those queues by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, HandlerSpec] = {}
        self._schedules: dict[str, Schedule] = {}

    def add(self, task: HandlerSpec) -> None:
        """Register a handler; re-registering the same function (a re-import) replaces it."""
        existing = self._tasks.get(task.queue)
        if existing is not None and existing.name != task.name:
            raise HandlerRegistrationError(
                f"queue {task.queue!r} already has handler {existing.name}; cannot add {task.name}"
            )
        for declared in self.schedules(task.queue):
            _check_payload(declared, task)
        self._tasks[task.queue] = task

    def add_schedule(self, declared: Schedule) -> None:
        """Add a schedule (worker.schedules); its payload must fit the queue's handler, if known.

        The same declaration again (a re-import) is no change; another one under a taken name is
        a ScheduleError: the name is the key of its ticks in the database.
        """
        existing = self._schedules.get(declared.name)
        if existing is not None and existing != declared:
            raise ScheduleError(
                f"two schedules are named {declared.name!r} ({existing.queue} {existing.cron!r} and "
                f"{declared.queue} {declared.cron!r}): give one of them another name="
            )
        if (task := self._tasks.get(declared.queue)) is not None:
            _check_payload(declared, task)
        self._schedules[declared.name] = declared

    @classmethod
    def from_modules(cls, names: Sequence[str]) -> Registry:
        """The handlers `@handler` marked and the schedules `schedule()` declared in these modules
        and their submodules (imported if need be)."""
        found = cls()
        modules = import_modules(names)
        for spec in marked(modules):
            for each in spec if isinstance(spec, tuple) else (spec,):
                if isinstance(each, HandlerSpec):
                    found.add(each)
        for module in within(modules):
            for declared in list(vars(module).get(SCHEDULES_ATTRIBUTE, {}).values()):
                if isinstance(declared, Schedule):
                    found.add_schedule(declared)
        return found

    def schedules(self, queue: str | None = None) -> list[Schedule]:
        """The schedules (of one queue, or all), sorted by name."""
        return [s for _, s in sorted(self._schedules.items()) if queue is None or s.queue == queue]

    def schedule(self, name: str) -> Schedule | None:
        """The schedule of that name, or None."""
        return self._schedules.get(name)

    def has_schedules(self, queue: str) -> bool:
        """Whether any schedule sends to `queue` (its deliveries then look up their tick)."""
        return any(s.queue == queue for s in self._schedules.values())

    def queue_specs(self) -> list[QueueSpec]:
        """Every registered queue as the catalog's plain data, sorted by name (Catalog derives from it)."""
        return [self._tasks[queue].queue_spec() for queue in self.queues()]

    def get(self, queue: str) -> HandlerSpec:
        """The handler of a queue, or UnknownQueue."""
        try:
            return self._tasks[queue]
        except KeyError:
            raise UnknownQueue(f"no handler is registered for queue {queue!r}") from None

    def queues(self) -> list[str]:
        """Registered queue names, sorted."""
        return sorted(self._tasks)

    def keeps_job_rows(self, queue: str) -> bool:
        """Whether `queue`'s messages come with job rows: its handler's `job_rows`, True for a queue
        no handler here serves (a handoff's or fan-out's target another worker runs)."""
        spec = self._tasks.get(queue)
        return True if spec is None else spec.job_rows

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)


def handler(
    queue: QueueRef,
    *,
    max_attempts: int = 5,
    visibility_timeout: float | timedelta = 30,
    timeout: float | timedelta | None = None,
    backoff: Backoff | float | timedelta | None = None,
    archive: bool = False,
    steps: Sequence[str] = (),
    job_rows: bool = True,
    partitioned: bool = False,
    priority: int = 0,
    concurrency: int | None = None,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register `def f(payload, ctx)` or `async def f(payload, ctx)` as the handler of a queue.

    max_attempts: deliveries before the message is dead-lettered (>= 1).
    visibility_timeout: how long a delivery stays hidden; renewed at half while the handler runs.
    timeout: wall-clock limit for one attempt; past it the attempt fails and is retried.
    backoff: a Backoff, or the base delay of the default exponential backoff.
    archive: on success, move the message to pgmq's archive table instead of deleting it.
    steps: the names of the handler's `ctx.step(...)` calls, in order, so progress is reported
        as the share of steps done (optional: without it only the step name is reported).
    job_rows: False runs the queue without `pgmq_worker.jobs` rows: the read and the ack are
        pgmq's alone (the fastest drain). Nothing then records status, progress, steps, results,
        webhooks, fan-out or rate-limit deferrals for its messages (RateLimited counts as a failed
        attempt); retries, dead-lettering, leases and timeouts work as ever.
    partitioned: True creates the queue, when the worker finds it missing, with pgmq's
        create_partitioned (10,000 message ids a partition; needs the pg_partman extension and its
        maintenance to add partitions: docs/concepts/under-pressure.md).
    """
    name = queue_of(queue)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise HandlerRegistrationError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    vt = seconds(visibility_timeout, "visibility_timeout")
    limit = None if timeout is None else seconds(timeout, "timeout")
    policy = Backoff.of(backoff)
    declared = tuple(steps)
    if len(set(declared)) != len(declared) or not all(isinstance(s, str) and s for s in declared):
        raise HandlerRegistrationError(f"steps must be distinct non-empty names, got {steps!r}")
    if not isinstance(job_rows, bool):
        raise HandlerRegistrationError(f"job_rows must be True or False, got {job_rows!r}")
    if not isinstance(partitioned, bool):
        raise HandlerRegistrationError(f"partitioned must be True or False, got {partitioned!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise HandlerRegistrationError(
            f"@handler({name!r}): priority must be an integer from {PRIORITIES.start} to "
            f"{PRIORITIES.stop - 1} (higher is read first), got {priority!r}"
        )
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_QUEUE_CONCURRENCY
    ):
        raise HandlerRegistrationError(
            f"@handler({name!r}): concurrency must be None or an integer from 1 to "
            f"{MAX_QUEUE_CONCURRENCY}, got {concurrency!r}"
        )
    if declared and not job_rows:
        raise HandlerRegistrationError(
            f"@handler({name!r}): steps need job rows (each step's output is stored with its job); "
            "drop steps=... or job_rows=False"
        )

    def register(fn: F) -> F:
        if not callable(fn):
            raise HandlerRegistrationError(f"@handler({name!r}) decorates a callable, got {fn!r}")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise HandlerRegistrationError(
                f"handler {fn.__qualname__} must take (payload, ctx), it takes {len(params)} parameters"
            )
        model = queue.model if isinstance(queue, Contract) else _annotated_model(fn, params[0].name)
        spec = HandlerSpec(
            queue=name,
            fn=fn,
            model=model,
            is_async=inspect.iscoroutinefunction(fn),
            max_attempts=max_attempts,
            visibility_timeout=vt,
            timeout=limit,
            backoff=policy,
            archive=archive,
            name=f"{fn.__module__}.{fn.__qualname__}",
            steps=declared,
            job_rows=job_rows,
            partitioned=partitioned,
            summary=(inspect.getdoc(fn) or "").split("\n", 1)[0],
            priority=priority,
            concurrency=concurrency,
        )
        # Stacked @handler lines add up: one function may serve several queues (urgent and bulk).
        marks = getattr(fn, SPEC_ATTRIBUTE, ())
        earlier = tuple(
            m
            for m in (marks if isinstance(marks, tuple) else (marks,))
            if isinstance(m, HandlerSpec) and m.fn is fn
        )
        if any(m.queue == name for m in earlier):
            raise HandlerRegistrationError(f"{fn.__qualname__} already handles queue {name!r}")
        setattr(fn, SPEC_ATTRIBUTE, (*earlier, spec))  # Registry.from_modules finds them here
        if registry is not None:
            registry.add(spec)
        return fn

    return register


def _check_payload(declared: Schedule, task: HandlerSpec) -> None:
    """ScheduleError unless the schedule's payload fits the model the queue's handler takes."""
    if task.model is None:
        return
    try:
        task.model.model_validate(declared.payload)
    except ValidationError as exc:
        raise ScheduleError(
            f"schedule {declared.name!r}: its payload does not fit {task.model.__name__}, the payload "
            f"of {task.name}: {describe_validation_error(exc)}"
        ) from None


def _annotated_model(fn: Callable[..., Any], param: str) -> type[BaseModel] | None:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise HandlerRegistrationError(f"cannot resolve the annotations of {fn.__qualname__}: {exc}") from exc
    hint = hints.get(param)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None
