"""Progress reports from a running handler to its job row, coalesced.

Supabase Realtime's free tier carries 100 messages a second for a whole project, and each row
update is one: a handler reporting in a tight loop must not turn into a write per call. Reports
are written at most once per `min_interval` per job; the latest value wins, and whatever is still
pending when the handler ends is written before its message is settled, so the last step shown is
the last step reported.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from db import storable
from db.errors import one_line
from db.logs import get_logger
from worker.errors import InvalidResult
from worker.running_marks import RunningMark
from worker.trouble import TRANSIENT

log = get_logger()

# Only the delivery that holds the job may report: a worker whose lease ran out and whose
# message was read again (attempts moved on) must not overwrite the new attempt's progress.
WRITE_PROGRESS = """
UPDATE pgmq_worker.jobs
SET progress = %(progress)s, step = coalesce(%(step)s, step), detail = coalesce(%(detail)s, detail),
    updated_at = now()
WHERE id = %(job_id)s AND attempts = %(attempt)s AND status = 'running'
"""


@dataclass(frozen=True, slots=True)
class Report:
    """One progress report."""

    progress: int
    step: str | None
    detail: dict[str, Any] | None


def check_report(progress: float, step: str | None, detail: dict[str, Any] | None) -> Report:
    """Validate a report: progress 0-100, step a short string, detail a JSON object.

    A step or detail that may not be stored (db.storable) raises InvalidResult, a ValueError
    naming the field: `detail.pages[3].text: contains NUL (U+0000) ...`.
    """
    if isinstance(progress, bool) or not isinstance(progress, int | float) or not math.isfinite(progress):
        raise ValueError(f"progress must be a number from 0 to 100, got {progress!r}")
    if not 0 <= progress <= 100:
        raise ValueError(f"progress must be from 0 to 100, got {progress!r}")
    if step is not None and (not isinstance(step, str) or len(step) > 200):
        raise ValueError("step must be a string of at most 200 characters")
    if detail is not None and not isinstance(detail, dict):
        raise ValueError(f"detail must be a JSON object (dict), got {type(detail).__name__}")
    if step is not None:
        _stored("step", storable.check_text, step)
    return Report(
        round(progress), step, None if detail is None else _stored("detail", storable.jsonable, detail)
    )


def _stored(field: str, check: Callable[[Any], Any], value: Any) -> Any:
    """check(value), its Unstorable raised as InvalidResult naming the field."""
    try:
        return check(value)
    except storable.Unstorable as exc:
        raise InvalidResult(f"ctx.progress: {exc.describe(field)}") from None


class ProgressReporter:
    """Coalesces one job's progress reports into at most one row update per `min_interval`."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        job_id: UUID,
        attempt: int,
        min_interval: float,
        mark: RunningMark | None = None,
    ) -> None:
        self._pool = pool
        self._mark = mark  # the row says `running` before the first write (worker.running_marks)
        self._job_id = job_id
        self._attempt = attempt
        self._min_interval = min_interval
        self._pending: Report | None = None
        self._last_write = -math.inf
        self._timer: asyncio.Task[None] | None = None
        self._timer_error: Exception | None = None  # what a timed write raised: close() raises it
        self.writes = 0

    async def report(self, report: Report) -> None:
        """Record the latest report; write now if the last write is old enough, else soon."""
        previous = self._pending
        if previous is not None:
            # A report that leaves step or detail out keeps the unwritten one before it, as the
            # row would have if every report had been written.
            report = Report(
                report.progress,
                report.step if report.step is not None else previous.step,
                report.detail if report.detail is not None else previous.detail,
            )
        self._pending = report
        wait = self._last_write + self._min_interval - asyncio.get_running_loop().time()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(wait))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        try:
            await self.flush()
        except Exception as exc:
            # This timer belongs to one delivery: what it could not write (a value Postgres
            # refused) fails that attempt at close(), instead of dying unseen or stopping the worker.
            self._timer_error = exc

    async def flush(self) -> None:
        """Write the pending report, if any (the handler's end calls this before settling)."""
        report, self._pending = self._pending, None
        if report is None:
            return
        self._last_write = asyncio.get_running_loop().time()
        try:
            if self._mark is not None:
                await self._mark.ensure()
            async with self._pool.connection(timeout=5) as conn:
                await conn.execute(
                    WRITE_PROGRESS,
                    {
                        "progress": report.progress,
                        "step": report.step,
                        "detail": None if report.detail is None else storable.jsonb(report.detail),
                        "job_id": self._job_id,
                        "attempt": self._attempt,
                    },
                )
            self.writes += 1
        except TRANSIENT as exc:  # progress is advisory: a handler must not fail because the database blinked
            log.warning("job.progress_not_written", error=one_line(exc)[:200])

    async def close(self) -> None:
        """Stop the timer and write what is pending; raise what a timed write could not write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
        if self._timer_error is not None:
            raise self._timer_error

    def discard(self) -> None:
        """Drop what is pending (the attempt was abandoned: its row is settled by someone else)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None
