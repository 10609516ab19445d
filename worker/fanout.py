"""Fan-out / fan-in: a parent job spawns child jobs and resumes with their outcomes.

    batch = await ctx.fan_out("generate", IMAGE, [ImageRequested(prompt=p) for p in prompts],
                              timeout=30, max_attempts=2, max_running=4, min_succeeded=0.8)
    return {"summary": batch.summary, "images": batch.results}

The first delivery records the fan-out and sends the children (at most `max_running` at once;
the rest follow as running ones end), then ends: the parent's message waits, hidden, until the
last child ends (the child's settle wakes it) or the fan-out's deadline passes. The next
delivery runs the handler again from the top: finished steps return their stored outputs, and
`fan_out` returns a `FanIn` with every child's outcome. At the deadline, children still queued
or running are cancelled and reported so. A fan-out is a step: once it has returned, it returns
the same `FanIn` on every later delivery without spawning again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from db.durations import positive
from worker.errors import Permanent
from worker.store.fanouts import ChildPolicy, ChildRow

TIMEOUT_ERRORS = frozenset({"AttemptTimeout", "StepTimeout"})
MAX_CHILDREN = 10_000
DEFAULT_DEADLINE = timedelta(hours=1)


class WaitForChildren(BaseException):
    """The parent's delivery ends here; it resumes when its children have finished.

    A BaseException so that a handler's `except Exception` cannot swallow it.
    """

    def __init__(self, job_id: UUID, name: str) -> None:
        self.job_id = job_id
        self.name = name
        super().__init__(f"waiting for the children of fan-out {name!r}")


class FanOutFailed(Permanent):
    """Too few children of a fan-out succeeded for the parent's policy."""


@dataclass(frozen=True, slots=True)
class Child:
    """How one child ended: `succeeded`, `dead` (attempts spent) or `cancelled` (deadline)."""

    index: int
    status: str
    job_id: str | None
    attempts: int
    result: Any
    error: Any

    @property
    def ok(self) -> bool:
        """The child succeeded."""
        return self.status == "succeeded"

    @property
    def timed_out(self) -> bool:
        """The child's last attempt ran past its timeout (or its step's)."""
        return isinstance(self.error, dict) and self.error.get("type") in TIMEOUT_ERRORS

    def as_json(self) -> dict[str, Any]:
        """The child's entry in the parent's fan-in."""
        return {
            "index": self.index,
            "status": self.status,
            "job_id": self.job_id,
            "attempts": self.attempts,
            "timed_out": self.timed_out,
            "result": self.result,
            "error": None if self.error is None else _short_error(self.error),
        }


@dataclass(frozen=True, slots=True)
class FanIn:
    """Every child's outcome, by index, with the counts."""

    name: str
    children: tuple[Child, ...]

    @property
    def total(self) -> int:
        """How many children were asked for."""
        return len(self.children)

    @property
    def succeeded(self) -> int:
        """How many succeeded."""
        return sum(c.ok for c in self.children)

    @property
    def failed(self) -> int:
        """How many did not succeed (dead, timed out or cancelled)."""
        return self.total - self.succeeded

    @property
    def timed_out(self) -> int:
        """How many failed by running past their timeout."""
        return sum(c.timed_out and not c.ok for c in self.children)

    @property
    def cancelled(self) -> int:
        """How many were cancelled at the fan-out's deadline (or by someone else)."""
        return sum(c.status == "cancelled" for c in self.children)

    @property
    def results(self) -> list[Any]:
        """The results of the children that succeeded, in index order."""
        return [c.result for c in self.children if c.ok]

    @property
    def summary(self) -> str:
        """For example "12 of 14 succeeded (1 failed, 1 timed out)"."""
        text = f"{self.succeeded} of {self.total} succeeded"
        dead = self.failed - self.timed_out - self.cancelled
        parts = [
            f"{n} {what}"
            for n, what in ((dead, "failed"), (self.timed_out, "timed out"), (self.cancelled, "cancelled"))
            if n
        ]
        return f"{text} ({', '.join(parts)})" if parts else text

    def as_json(self) -> dict[str, Any]:
        """The fan-in as stored for the step and shown in results."""
        return {
            "name": self.name,
            "summary": self.summary,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "children": [c.as_json() for c in self.children],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FanIn:
        """The FanIn a finished fan-out step stored."""
        return cls(
            name=str(data["name"]),
            children=tuple(
                Child(c["index"], c["status"], c["job_id"], c["attempts"], c["result"], c["error"])
                for c in data["children"]
            ),
        )

    @classmethod
    def of(cls, name: str, total: int, rows: Sequence[ChildRow], cancelled_reason: str) -> FanIn:
        """The fan-in from the children's job rows; a child never sent counts as cancelled."""
        by_index = {r.index: r for r in rows}
        children = []
        for i in range(total):
            row = by_index.get(i)
            if row is None:
                error = {"type": "FanOutDeadline", "message": cancelled_reason}
                children.append(Child(i, "cancelled", None, 0, None, error))
            else:
                children.append(Child(i, row.status, str(row.job_id), row.attempts, row.result, row.error))
        return cls(name, tuple(children))

    def check(self, min_succeeded: int | float | None) -> None:
        """Raise FanOutFailed when fewer children succeeded than the policy asks (None: all)."""
        needed = required(min_succeeded, self.total)
        if self.succeeded < needed:
            raise FanOutFailed(f"fan-out {self.name!r}: {self.summary}; at least {needed} needed")


def required(min_succeeded: int | float | None, total: int) -> int:
    """How many children must succeed: all (None), a count (int) or a share of total (0-1 float)."""
    if min_succeeded is None:
        return total
    if isinstance(min_succeeded, float):
        return math.ceil(min_succeeded * total - 1e-9)
    return min_succeeded


def policy(
    count: int,
    *,
    timeout: float | timedelta | None,
    max_attempts: int | None,
    max_running: int | None,
    deadline: float | timedelta,
    min_succeeded: int | float | None,
) -> ChildPolicy:
    """The children's policy, checked: ValueError names the first bad argument."""
    if not 1 <= count <= MAX_CHILDREN:
        raise ValueError(f"a fan-out has 1-{MAX_CHILDREN} children, got {count}")
    timeout_s = _seconds(timeout, "timeout")
    deadline_s = _seconds(deadline, "deadline")
    if deadline_s is None:
        raise ValueError("deadline must be given")
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    if max_running is not None and (not isinstance(max_running, int) or max_running < 1):
        raise ValueError(f"max_running must be an integer >= 1, got {max_running!r}")
    if isinstance(min_succeeded, bool) or (
        min_succeeded is not None
        and not (
            (isinstance(min_succeeded, int) and 0 <= min_succeeded <= count)
            or (isinstance(min_succeeded, float) and 0.0 <= min_succeeded <= 1.0)
        )
    ):
        raise ValueError(f"min_succeeded is a count (0-{count}) or a share (0.0-1.0), got {min_succeeded!r}")
    return ChildPolicy(
        max_running=min(max_running or count, count),
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        deadline_s=deadline_s,
    )


def _seconds(value: float | timedelta | None, what: str) -> float | None:
    if value is None:
        return None
    return positive(value, what).total_seconds()


def _short_error(error: Any) -> Any:
    """A child's error without its traceback (the child's own job row keeps that)."""
    if isinstance(error, dict):
        return {k: v for k, v in error.items() if k != "traceback"}
    return error
