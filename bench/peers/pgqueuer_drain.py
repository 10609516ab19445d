"""PgQueuer drain: N no-op jobs enqueued in bulk, then drained by its own benchmark's defaults.

Settings as in PgQueuer's tools/benchmark.py (drain strategy): asyncpg, 5 consumers (one
PgQueuer and one connection each), dequeue batch size 10, QueueExecutionMode.drain (each consumer
returns once the queue is empty and its tasks are done). Timed from the first handler start to
the last consumer's return. Prints one JSON object (drain_report.report).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from drain_report import DrainClock, parse_args, report
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries
from pgqueuer.domain.types import QueueExecutionMode

CONSUMERS = 5
BATCH_SIZE = 10
ENQUEUE_CHUNK = 10_000
ENTRYPOINT = "noop"


async def main() -> None:
    """Install, enqueue, drain, report."""
    args = parse_args(__doc__.splitlines()[0])
    clock = DrainClock(args.jobs)
    setup = await asyncpg.connect(dsn=args.dsn)
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    started = time.perf_counter()
    for offset in range(0, args.jobs, ENQUEUE_CHUNK):
        n = min(ENQUEUE_CHUNK, args.jobs - offset)
        await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
    enqueue_s = time.perf_counter() - started

    consumers = []
    for _ in range(CONSUMERS):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(dsn=args.dsn)))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            clock.tick()

        consumers.append(pgq)
    worker_started = time.perf_counter()
    await asyncio.gather(*(c.run(batch_size=BATCH_SIZE, mode=QueueExecutionMode.drain) for c in consumers))
    drained = time.perf_counter()
    left = sum(s.count for s in await queries.queue_size())  # finished jobs leave the table
    report(
        "pgqueuer",
        {"driver": "asyncpg", "consumers": CONSUMERS, "batch_size": BATCH_SIZE},
        clock,
        enqueue_s=enqueue_s,
        worker_started=worker_started,
        drained=drained,
        left=left,
    )


if __name__ == "__main__":
    asyncio.run(main())
