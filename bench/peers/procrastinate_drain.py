"""Procrastinate drain: N no-op jobs deferred in bulk, then drained by one worker, concurrency 10.

Jobs are deferred with Task.batch_defer_async (one statement per chunk). The worker is
App.run_worker_async(concurrency=10, wait=False): it returns once it has caught up with the
queue. Timed from the first handler start to that return. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import time

import procrastinate
from drain_report import DrainClock, parse_args, report

CONCURRENCY = 10
DEFER_CHUNK = 10_000
QUEUE = "bench"
COUNT_LEFT = "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"


async def main() -> None:
    """Apply the schema, defer, drain, report."""
    args = parse_args(__doc__.splitlines()[0])
    clock = DrainClock(args.jobs)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=args.dsn))

    @app.task(name="noop", queue=QUEUE)
    async def noop() -> None:
        clock.tick()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        for offset in range(0, args.jobs, DEFER_CHUNK):
            await noop.batch_defer_async(*({} for _ in range(min(DEFER_CHUNK, args.jobs - offset))))
        enqueue_s = time.perf_counter() - started
        await app.connector.execute_query_async("ANALYZE")
        worker_started = time.perf_counter()
        await app.run_worker_async(
            queues=[QUEUE], concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
        )
        drained = time.perf_counter()
        row = await app.connector.execute_query_one_async(COUNT_LEFT)
    report(
        "procrastinate",
        {"concurrency": CONCURRENCY, "connector": "PsycopgConnector"},
        clock,
        enqueue_s=enqueue_s,
        worker_started=worker_started,
        drained=drained,
        left=int(row["n"]),
    )


if __name__ == "__main__":
    asyncio.run(main())
