"""Chancy drain: N no-op jobs pushed in bulk, then drained by one worker, queue concurrency 100.

The queue uses Chancy's AsyncExecutor (the handler is a no-op coroutine) with concurrency 100 and
eager polling (fetch again as soon as a job completes, as its docs advise for a queue that always
has work); its log at WARNING, as ours and the other peers run. Chancy writes job results back
in batches, so the drain ends when the database shows every job finished, not when the last
handler ran. Timed from the first handler start to then. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chancy import Chancy, Queue, Worker, job
from drain_report import DrainClock, parse_args, report

CONCURRENCY = 100
QUEUE = "bench"
PUSH_CHUNK = 10_000
POLL_S = 0.02
COUNT_LEFT = "SELECT count(*) FROM chancy_jobs WHERE state NOT IN ('succeeded', 'failed')"

clock: DrainClock | None = None


@job(queue=QUEUE)
async def noop() -> None:
    """Do nothing but note the start."""
    if clock is not None:
        clock.tick()


async def jobs_left(chancy: Chancy) -> int:
    """Jobs not yet recorded as finished."""
    async with chancy.pool.connection() as conn, conn.cursor() as cursor:
        await cursor.execute(COUNT_LEFT)
        row = await cursor.fetchone()
    return int(row[0]) if row else -1


async def main() -> None:
    """Migrate, declare, push, drain, report."""
    global clock  # noqa: PLW0603  (the job function must be importable by name: module level)
    args = parse_args(__doc__.splitlines()[0])
    clock = DrainClock(args.jobs)
    quiet = logging.getLogger("bench.chancy")  # its default logs every job at INFO, through rich
    quiet.setLevel(logging.WARNING)
    async with Chancy(args.dsn, log=quiet) as chancy:
        await chancy.migrate()
        await chancy.declare(
            Queue(QUEUE, concurrency=CONCURRENCY, executor=Chancy.Executor.Async, eager_polling=True)
        )
        started = time.perf_counter()
        async for _refs in chancy.push_many([noop.job] * args.jobs, batch_size=PUSH_CHUNK):
            pass
        enqueue_s = time.perf_counter() - started
        worker_started = time.perf_counter()
        async with Worker(chancy, register_signal_handlers=False):
            await clock.all_started.wait()
            while (left := await jobs_left(chancy)) > 0:  # noqa: ASYNC110  (the database is the event)
                await asyncio.sleep(POLL_S)
            drained = time.perf_counter()
    report(
        "chancy",
        {"concurrency": CONCURRENCY, "executor": "AsyncExecutor", "eager_polling": True},
        clock,
        enqueue_s=enqueue_s,
        worker_started=worker_started,
        drained=drained,
        left=left,
    )


if __name__ == "__main__":
    asyncio.run(main())
