"""Periodic jobs: `schedule(queue, cron, ...)` declares one, beside the queue's `@handler`.

A Schedule is plain data: its name (the key of its ticks in the database), its queue, the cron
expression (five fields, or six with seconds first; parsed by `cronsim`), the IANA timezone its
fields are read in, the payload every tick sends and the catch-up policy for ticks missed while
no worker ran. Declaring one checks all of it at once: a bad cron, timezone, payload or policy
is a ScheduleError naming the schedule, at the import of the module that declares it.

There is no module-level list of schedules: `schedule()` called at a module's top level leaves
the Schedule in that module's namespace (`SCHEDULES_ATTRIBUTE`, by name), where
`Registry.from_modules` finds it as it finds the functions `@handler` marked; called elsewhere
(a test), pass `registry=` or add it to a Registry yourself.

The arithmetic lives here too, as pure functions of the times they are given (tests call them
without a clock): the ticks after a time, and which of the ticks a worker finds due it sends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from db.storable import Unstorable, check_text
from queues.contract import QueueRef, queue_of
from queues.enqueue import prepare
from queues.errors import InvalidPayload, QueueError
from worker.errors import ScheduleError

if TYPE_CHECKING:
    from worker.registry import Registry

SCHEDULES_ATTRIBUTE = "__pgmq_schedules__"  # a handler module's {name: Schedule}
MAX_NAME = 200
# A pass that finds a tick older than this woke late (the process was stopped, suspended or
# starved): the ticks before it count as missed, and the schedule's catch_up decides.
LATE = timedelta(minutes=1)
MAX_TICKS_PER_PASS = 1000  # catch_up=<window> over a long downtime sends in passes of this many

CatchUp = Literal["latest", "none"] | timedelta


@dataclass(frozen=True, slots=True)
class Plan:
    """One pass over a schedule: the ticks to send, oldest first, and the tick it has dealt with."""

    send: list[datetime]
    cursor: datetime


@dataclass(frozen=True, slots=True)
class Schedule:
    """A declared periodic job: every tick of `cron` in `timezone` sends `payload` to `queue`."""

    name: str
    queue: str
    cron: str
    timezone: str
    payload: dict[str, Any]
    catch_up: CatchUp = "latest"
    zone: ZoneInfo = field(repr=False, compare=False, default=ZoneInfo("UTC"))

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """The ticks strictly after `after` (timezone-aware), in order, each in the schedule's zone."""
        start = after.astimezone(self.zone).replace(microsecond=0)
        for tick in CronSim(self.cron, start):
            if tick > after:
                yield tick

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after `after`."""
        return next(self.ticks_after(after))

    def latest_tick(self, at: datetime) -> datetime | None:
        """The last tick at or before `at`, or None if the expression has none before it."""
        start = at.astimezone(self.zone)
        if start.microsecond == 0:
            start += timedelta(microseconds=1)  # reverse iteration includes a whole-second `at` then
        try:
            return next(iter(CronSim(self.cron, start, reverse=True)))
        except StopIteration:
            return None

    def due(self, after: datetime, now: datetime) -> list[datetime]:
        """The ticks in (after, now], oldest first, at most MAX_TICKS_PER_PASS of them."""
        found: list[datetime] = []
        for tick in self.ticks_after(after):
            if tick > now or len(found) >= MAX_TICKS_PER_PASS:
                break
            found.append(tick)
        return found

    def plan(self, after: datetime, now: datetime, *, resumed: bool) -> Plan:
        """What a pass at `now` sends of the ticks after `after`, and where it leaves the cursor.

        A running worker that wakes on time sends every tick due: none is missed. `resumed`
        (the worker's first pass, or one that woke more than LATE after its tick) means the ticks
        in (after, now] were missed, and `catch_up` decides: `latest` sends the newest of them
        only, `none` none (the next tick runs as usual), a timedelta those within it of now,
        oldest first (MAX_TICKS_PER_PASS at a time: the cursor stops at the last one sent).
        """
        if not resumed:
            due = self.due(after, now)
            return Plan(due, due[-1] if due else after)
        if isinstance(self.catch_up, timedelta):
            due = self.due(max(after, now - self.catch_up - timedelta(seconds=1)), now)
            due = [tick for tick in due if now - tick <= self.catch_up]
            return Plan(due, due[-1] if due and len(due) >= MAX_TICKS_PER_PASS else max(after, now))
        latest = self.latest_tick(now)
        if latest is None or latest <= after:
            return Plan([], after)
        return Plan([latest] if self.catch_up == "latest" else [], latest)

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON (the `schedules` command, the schedules table)."""
        catch_up = self.catch_up
        return {
            "name": self.name,
            "queue": self.queue,
            "cron": self.cron,
            "timezone": self.timezone,
            "payload": self.payload,
            "catch_up": catch_up if isinstance(catch_up, str) else f"{catch_up.total_seconds():g}s",
        }


def schedule(
    queue: QueueRef,
    cron: str,
    *,
    payload: Any = None,
    name: str | None = None,
    timezone: str = "UTC",
    catch_up: CatchUp = "latest",
    registry: Registry | None = None,
) -> Schedule:
    """Send `payload` to `queue` at every tick of `cron`: exactly one message per tick, fleet-wide.

    cron: five fields (minute hour day month weekday), or six with seconds first
        (`"*/10 * * * * *"`), read in `timezone` (an IANA name; daylight-saving time is its).
    payload: the message (a JSON object, or the queue's pydantic model), validated now against
        the queue's contract when `queue` is a Contract (and against its handler's model when
        the registry is built). None sends `{}`.
    name: the schedule's key in the database (default `"<queue> <cron>"`): keep it when you
        change the cron, and give two schedules of one queue and cron different names.
    catch_up: after every worker was down, `"latest"` runs the newest missed tick only,
        `"none"` none of them, a timedelta every missed tick within it (oldest first).
    registry: also add it to this Registry now (tests declaring schedules inline).

    Called at a handler module's top level, the module keeps it for `Registry.from_modules`.
    """
    queue_name = _queue(queue, name)
    label = _name(name, queue_name, cron)
    expression = _cron(cron, label)
    zone = _zone(timezone, label)
    body = _payload(queue, {} if payload is None else payload, label)
    policy = _catch_up(catch_up, label)
    declared = Schedule(label, queue_name, expression, timezone, body, policy, zone)
    _keep_in_caller(declared)
    if registry is not None:
        registry.add_schedule(declared)
    return declared


def _queue(queue: QueueRef, name: str | None) -> str:
    try:
        return queue_of(queue)
    except QueueError as exc:
        raise ScheduleError(f"schedule {name or queue!r}: {exc}") from None


def _name(name: str | None, queue: str, cron: Any) -> str:
    label = f"{queue} {' '.join(cron.split())}" if name is None and isinstance(cron, str) else name
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_NAME:
        raise ScheduleError(f"schedule name must be 1-{MAX_NAME} characters, got {label!r}")
    try:
        check_text(label)
    except Unstorable as exc:
        raise ScheduleError(f"schedule name {label!r}: {exc.reason}") from None
    return label


def _cron(cron: Any, label: str) -> str:
    if not isinstance(cron, str):
        raise ScheduleError(f"schedule {label!r}: cron must be a string, got {cron!r}")
    expression = " ".join(cron.split())
    if len(expression.split()) not in (5, 6):
        raise ScheduleError(
            f"schedule {label!r}: cron {cron!r} must have five fields (minute hour day month "
            "weekday) or six with seconds first"
        )
    try:
        ticks = CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
        next(ticks)
    except (CronSimError, StopIteration) as exc:
        raise ScheduleError(
            f"schedule {label!r}: cron {cron!r} is invalid: {exc or 'it never fires'}"
        ) from None
    return expression


def _zone(timezone: Any, label: str) -> ZoneInfo:
    if not isinstance(timezone, str) or not timezone:
        raise ScheduleError(f"schedule {label!r}: timezone must be an IANA name, got {timezone!r}")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"schedule {label!r}: unknown timezone {timezone!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


def _payload(queue: QueueRef, payload: Any, label: str) -> dict[str, Any]:
    try:
        return prepare(queue, payload)[1]
    except InvalidPayload as exc:
        raise ScheduleError(f"schedule {label!r}: {exc}") from None


def _catch_up(catch_up: Any, label: str) -> CatchUp:
    if isinstance(catch_up, timedelta):
        if catch_up <= timedelta(0):
            raise ScheduleError(f"schedule {label!r}: a catch_up window must be positive, got {catch_up}")
        return catch_up
    if catch_up in ("latest", "none"):
        return catch_up  # type: ignore[no-any-return]  # one of the two literals
    hint = " (all missed ticks: pass the window, catch_up=timedelta(hours=6))" if catch_up == "all" else ""
    raise ScheduleError(
        f"schedule {label!r}: catch_up must be 'latest', 'none' or a timedelta window, got {catch_up!r}{hint}"
    )


def _keep_in_caller(declared: Schedule) -> None:
    """Leave the schedule in the namespace of the module whose top level called schedule()."""
    frame = sys._getframe(2)  # schedule()'s caller
    if frame.f_globals is not frame.f_locals or "__name__" not in frame.f_globals:
        return  # inside a function or class: the caller holds it (or passed registry=)
    held = frame.f_globals.setdefault(SCHEDULES_ATTRIBUTE, {})
    held[declared.name] = declared  # a re-import declares it again: the same key, replaced
