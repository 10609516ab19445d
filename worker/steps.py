"""Resumable steps: `await ctx.step("ocr", ocr_page, path)` runs once per job, whatever happens.

Each finished step's output is written to `pgmq_worker.job_steps` in its own transaction. When
the message is delivered again (a retry, a crashed worker, a redeploy), a finished step returns
its stored output without running, so the handler resumes at the first unfinished step with the
earlier outputs in hand. A step that is interrupted runs again (at least once, like the job).
Outputs are JSON values and come back as JSON gives them (tuples as lists, models as dicts), the
same on the first run as on a resumed one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from db import storable
from db.storable import safe_text
from worker.cancels import CancelFlag
from worker.errors import InvalidResult, Permanent, RateLimited
from worker.fanout import FanIn, WaitForChildren
from worker.outcome import ErrorInfo
from worker.progress import ProgressReporter, check_report
from worker.running_marks import RunningMark
from worker.store import fanouts
from worker.store.job_steps import fail_step, finish_step, load_steps, start_step
from worker.threads import in_thread


class StepTimeout(TimeoutError):
    """A step ran past its own timeout (a failed attempt of the job, retried like any other)."""


def as_json(output: Any, step: str) -> Any:
    """The output as it will come back from the database; InvalidResult if it may not be stored.

    Encoded by the storage rule (db.storable) and read back, so a first run sees what a resumed
    one will: tuples as lists, models and dataclasses as dicts, datetimes as ISO strings.
    """
    try:
        # json, not orjson: orjson reads an integer past 64 bits as a float; rows read back exact.
        return json.loads(storable.dumps_bytes(output))
    except storable.Unstorable as exc:
        raise InvalidResult(
            f"step {safe_text(step)!r} returned what may not be stored: {exc.describe('output')}"
        ) from None


def check_name(what: str, name: str) -> None:
    """A step's or fan-out's name: 1-200 characters a text column can hold; ValueError if not."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"a {what} name is 1-200 characters")
    try:
        storable.check_text(name)
    except storable.Unstorable as exc:
        raise InvalidResult(f"a {what} name {exc.reason}") from None


class Steps:
    """The steps of one delivery of one job: what finished before, and running the rest."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        job_id: UUID,
        *,
        declared: Sequence[str] = (),
        reporter: ProgressReporter | None = None,
        executor: Executor | None = None,
        cancel: CancelFlag | None = None,
        mark: RunningMark | None = None,
    ) -> None:
        self.pool = pool
        self._mark = mark  # the job row says `running` before a step's row hangs off it
        self._cancel = cancel  # set once the job was cancelled: no step or fan-out starts after
        self.job_id = job_id
        self.declared = tuple(declared)
        self.reporter = reporter
        self._executor = executor  # the handler threads a plain step function runs in
        self._known: dict[str, tuple[str, int, Any]] | None = None
        self.ran: list[str] = []  # steps this delivery ran (not resumed), in order
        self._percent = 0

    async def run(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        limit_s: float | None,
        max_attempts: int | None,
    ) -> Any:
        """The step's stored output if it finished before; else run it, store and return its output."""
        check_name("step", name)
        known = await self._load()
        status, attempts, output = known.get(name, ("new", 0, None))
        if status == "done":
            await self._report(name, finished=True)
            return output
        if max_attempts is not None and attempts >= max_attempts:
            raise Permanent(f"step {name!r} failed {attempts} times (max_attempts={max_attempts})")
        if self._cancel is not None:
            self._cancel.raise_if_set(f"step {name!r} not started")
        if self._mark is not None:
            await self._mark.ensure()
        async with self.pool.connection() as conn:
            attempt = await start_step(conn, self.job_id, name)
        if attempt is None:  # another delivery finished it a moment ago
            self._known = None
            return (await self._load())[name][2]
        await self._report(name, finished=False)
        try:
            output = as_json(await self._call(fn, args, kwargs, limit_s, name), name)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                # A RateLimited step is deferred with its job: not one of the step's attempts.
                counted = not isinstance(exc, RateLimited)
                async with self.pool.connection() as conn:
                    await fail_step(conn, self.job_id, name, ErrorInfo.of(exc).as_dict(), counted=counted)
            raise
        async with self.pool.connection() as conn:
            await finish_step(conn, self.job_id, name, output)
        known[name] = ("done", attempt, output)
        self.ran.append(name)
        await self._report(name, finished=True)
        return output

    async def fan_out(
        self,
        name: str,
        *,
        parent_queue: str,
        parent_msg_id: int,
        child_queue: str,
        bodies: list[dict[str, Any]],
        policy: fanouts.ChildPolicy,
    ) -> FanIn:
        """The fan-in of a finished fan-out step; else spawn or check on its children.

        Raises WaitForChildren while children are still out and the deadline is ahead: the
        worker parks the parent's message until the last child (or the deadline) wakes it.
        """
        check_name("fan-out", name)
        status, _, output = (await self._load()).get(name, ("new", 0, None))
        if status == "done":
            await self._report(name, finished=True)
            return FanIn.from_json(output)
        if self._cancel is not None:
            self._cancel.raise_if_set(f"fan-out {name!r} not started")
        if self._mark is not None:
            await self._mark.ensure()
        result: FanIn | None = None
        async with self.pool.connection() as conn, conn.transaction():
            state = await fanouts.lock(conn, self.job_id, name)
            if state is None:
                await fanouts.spawn(
                    conn,
                    parent=self.job_id,
                    name=name,
                    parent_queue=parent_queue,
                    parent_msg_id=parent_msg_id,
                    child_queue=child_queue,
                    bodies=bodies,
                    policy=policy,
                    progress=self._span(name),
                )
                await start_step(conn, self.job_id, name)
            elif state.status == "closed" or state.complete or state.past_deadline:
                reason = f"fan-out {name!r} passed its deadline before this child finished"
                await fanouts.close(conn, self.job_id, name, reason)
                rows = await fanouts.children(conn, self.job_id, name)
                result = FanIn.of(name, state.total, rows, reason)
                # Started (counted) when it spawned, in that transaction: collecting is no new start.
                await finish_step(conn, self.job_id, name, result.as_json())
        if result is not None:
            self._known = None
            await self._report(name, finished=True)
            return result
        if state is None:
            await self._report(name, finished=False)
        raise WaitForChildren(self.job_id, name)

    def _span(self, name: str) -> tuple[int, int]:
        """The parent's progress from the fan-out's start to its end, as children finish."""
        if name in self.declared:
            index = self.declared.index(name)
            return round(100 * index / len(self.declared)), round(100 * (index + 1) / len(self.declared))
        return self._percent, max(self._percent, 99)

    async def _load(self) -> dict[str, tuple[str, int, Any]]:
        if self._known is None:
            async with self.pool.connection() as conn:
                self._known = await load_steps(conn, self.job_id)
        return self._known

    async def _call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit_s: float | None,
        name: str,
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            call = fn(*args, **kwargs)
        else:
            call = in_thread(self._executor, fn, *args, **kwargs)
        if limit_s is None:
            return await call
        try:
            async with asyncio.timeout(limit_s):
                return await call
        except TimeoutError as exc:
            raise StepTimeout(f"step {name!r} ran past its timeout of {limit_s:g}s") from exc

    async def _report(self, name: str, *, finished: bool) -> None:
        if name in self.declared:
            index = self.declared.index(name) + (1 if finished else 0)
            self._percent = max(self._percent, round(100 * index / len(self.declared)))
        if self.reporter is not None:
            await self.reporter.report(check_report(self._percent, name, None))
