"""The dashboard's page queries at 1,000,000 job rows: p50/p95 per filter combination, printed.

    python bench/dashboard_pages.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/dashboard_pages.py --rows 1000000 --repeat 40 --keep   # keep the database for reruns

Makes a database `pgmqw_bench_dashboard` (pgmq's SQL, the migrations), fills pgmq_worker.jobs
with one INSERT ... SELECT generate_series (8 queues from 40% to 0.1% of the rows, 91% succeeded, 3% dead,
2% failed, 2% cancelled, 2% queued, 0.01% running, 60% of rows owned by one of 1,000 users, errors
of five types on the failed and dead rows, created over 30 days), ANALYZEs, then times each
filter combination of the jobs page (queues/job_list.py), first page and a page from a cursor
in the middle, the queues page (queues/overview.py) and a job page (queues/job_detail.py).
Rounds are interleaved (every query once per round), so machine noise spreads over all of them.

The write cost of migration 0021's indexes: 1,000 jobs enqueued (`enqueue_batch`), set running and
set succeeded on the 1M-row table, with the indexes and with them dropped inside a rolled-back
transaction, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import conninfo, sql

from db.migrate import migrate
from db.pgmq_install import install_sql
from queues import enqueue_batch, pgmq
from queues.job_detail import aget_detail
from queues.job_list import Cursor, JobFilter, list_jobs
from queues.overview import aoverview

NAME = "pgmqw_bench_dashboard"
QUEUES = ["images", "ocr", "translate", "speech", "report", "mail", "webhook", "export"]
INDEXES = [
    "jobs_created_idx",
    "jobs_queue_created_idx",
    "jobs_status_created_idx",
    "jobs_errored_created_idx",
    "jobs_errored_queue_created_idx",
    "jobs_error_text_idx",
]
# Pseudo-random but per row (an uncorrelated random() in a LATERAL is computed once for all rows):
# three independent uniform values in [0, 1) from hashes of the row number.
FILL = """
INSERT INTO pgmq_worker.jobs (id, queue, msg_id, status, progress, attempts, owner, error,
    created_at, started_at, updated_at, finished_at)
SELECT gen_random_uuid(), q.queue, i, s.status, CASE WHEN s.status = 'succeeded' THEN 100 ELSE 40 END,
    CASE WHEN s.status IN ('dead', 'failed') THEN 3 ELSE 1 END,
    CASE WHEN r.owner < 0.6 THEN ('00000000-0000-0000-0000-' || lpad((i %% 1000)::text, 12, '0'))::uuid END,
    CASE WHEN s.status IN ('dead', 'failed') THEN jsonb_build_object(
        'type', (ARRAY['TimeoutError', 'HTTPStatusError', 'ValueError', 'Permanent', 'KeyError'])[1 + i %% 5],
        'message', 'job ' || i || ' failed: ' || (ARRAY['read timed out', 'provider said 503',
            'bad page size', 'document was deleted', 'missing key'])[1 + i %% 5],
        'traceback', 'Traceback (most recent call last):' || chr(10) || '  File "handlers.py", line 1') END,
    t.created, t.created + interval '1 second', t.created + interval '3 seconds',
    CASE WHEN s.status IN ('succeeded', 'dead', 'cancelled') THEN t.created + interval '3 seconds' END
FROM generate_series(1, %(rows)s) AS i,
    LATERAL (SELECT (hashint8(i) & 16777215) / 16777216.0 AS st,
                    (hashint8(i + 7919) & 16777215) / 16777216.0 AS owner,
                    (hashint8(i + 104729) & 16777215) / 16777216.0 AS qq) AS r,
    LATERAL (SELECT CASE WHEN r.st < 0.91 THEN 'succeeded' WHEN r.st < 0.94 THEN 'dead'
        WHEN r.st < 0.96 THEN 'failed' WHEN r.st < 0.98 THEN 'cancelled' WHEN r.st < 0.9999 THEN 'queued'
        ELSE 'running' END AS status) AS s,
    -- images 40%%, ocr 25%%, translate 15%%, speech 10%%, report 5%%, mail 3%%, webhook 1.9%%, export 0.1%%
    LATERAL (SELECT CASE WHEN r.qq < 0.40 THEN 'images' WHEN r.qq < 0.65 THEN 'ocr'
        WHEN r.qq < 0.80 THEN 'translate' WHEN r.qq < 0.90 THEN 'speech' WHEN r.qq < 0.95 THEN 'report'
        WHEN r.qq < 0.98 THEN 'mail' WHEN r.qq < 0.999 THEN 'webhook' ELSE 'export' END AS queue) AS q,
    LATERAL (SELECT now() - interval '30 days' * (1 - i::float / %(rows)s) AS created) AS t
"""


def with_dbname(url: str, dbname: str) -> str:
    """The same server, another database."""
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


def prepare(server: str, rows: int, keep: bool) -> str:
    """The bench database, filled (reused when --keep left one with the same row count)."""
    url = with_dbname(server, NAME)
    with psycopg.connect(server, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (NAME,)).fetchone()
        if exists and keep:
            with psycopg.connect(url) as conn:
                count = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
            if count and int(count[0]) == rows:
                print(f"reusing {NAME}: {int(count[0]):,} job rows")
                return url
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(NAME)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(NAME)))
    with psycopg.connect(url, autocommit=True) as conn:
        install_sql(conn)
        migrate(conn)
        for queue in QUEUES:
            pgmq.ensure_queue(conn, queue)
        started = time.perf_counter()
        conn.execute(FILL, {"rows": rows})
        conn.execute("VACUUM ANALYZE pgmq_worker.jobs")
        print(f"filled {rows:,} job rows in {time.perf_counter() - started:.1f} s")
    return url


def middle_cursor(conn: psycopg.Connection[Any]) -> Cursor | None:
    """A cursor 15 days back (half the rows): the start of a deep page."""
    row = conn.execute(
        "SELECT created_at, id FROM pgmq_worker.jobs WHERE created_at < now() - interval '15 days'"
        " ORDER BY created_at DESC, id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else Cursor(row[0], row[1])


def combinations() -> list[tuple[str, JobFilter]]:
    """The jobs page's filter combinations the bench times."""
    owner = uuid.UUID("00000000-0000-0000-0000-000000000042")
    day = datetime.now(UTC) - timedelta(days=1)
    week = datetime.now(UTC) - timedelta(days=7)
    return [
        ("no filter", JobFilter()),
        ("queue (large)", JobFilter(queue="images")),
        ("queue (0.1%)", JobFilter(queue="export")),
        ("status succeeded", JobFilter(status="succeeded")),
        ("status running (0.01%)", JobFilter(status="running")),
        ("status dead (3%)", JobFilter(status="dead")),
        ("owner", JobFilter(owner=owner)),
        ("time: last day", JobFilter(since=day)),
        ("time: a day, a week ago", JobFilter(since=week - timedelta(days=1), until=week)),
        ("error text (common)", JobFilter(error="timed out")),
        ("error text (rare)", JobFilter(error="job 777777 failed")),
        ("error text (absent)", JobFilter(error="no such words anywhere")),
        ("queue + status", JobFilter(queue="export", status="dead")),
        ("queue + status + owner", JobFilter(queue="images", status="succeeded", owner=owner)),
        ("status + error", JobFilter(status="dead", error="503")),
        ("queue + error", JobFilter(queue="export", error="deleted")),
        ("queue + time", JobFilter(queue="ocr", since=week - timedelta(days=1), until=week)),
        ("owner + status", JobFilter(owner=owner, status="dead")),
        ("all six", JobFilter("images", "dead", owner, week - timedelta(days=20), week, "timed out")),
    ]


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call took."""
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def p(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_pages(url: str, repeat: int) -> None:
    """Time each combination (first page and a deep page), interleaved over `repeat` rounds."""
    with psycopg.connect(url, autocommit=True) as conn:
        jobs: dict[str, Callable[[], object]] = {}
        for name, where in combinations():
            cursor = middle_cursor(conn)
            jobs[f"{name} | page 1"] = lambda w=where: list_jobs(conn, w, 50)
            jobs[f"{name} | deep page"] = lambda w=where, c=cursor: list_jobs(conn, w, 50, before=c)
        newest = list_jobs(conn, JobFilter(), 1).rows[0]
        aconn_url = url

        async def overview() -> None:
            async with await psycopg.AsyncConnection.connect(aconn_url, autocommit=True) as aconn:
                await aoverview(aconn)

        async def detail() -> None:
            async with await psycopg.AsyncConnection.connect(aconn_url, autocommit=True) as aconn:
                await aget_detail(aconn, newest.id, newest.queue, 1)

        jobs["queues page (overview, incl. connect)"] = lambda: asyncio.run(overview())
        jobs["job page extras (incl. connect)"] = lambda: asyncio.run(detail())
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for fn in jobs.values():  # warm the cache once
            fn()
        for _ in range(repeat):
            for name, fn in jobs.items():
                times[name].append(timed(fn))
    width = max(len(n) for n in times)
    print(
        f"\n{'query':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'max ms':>8}"
        f"   ({repeat} runs each, 50-row pages)"
    )
    for name, values in times.items():
        print(
            f"{name:<{width}}  {statistics.median(values):8.2f}  {p(values, 0.95):8.2f}  {max(values):8.2f}"
        )
    worst = max(times, key=lambda n: p(times[n], 0.95))
    print(f"\nworst p95: {worst}: {p(times[worst], 0.95):.2f} ms")


LIFECYCLE = (  # what the worker's read and settle change on each job row, by id (the primary key)
    "UPDATE pgmq_worker.jobs SET status = 'running', started_at = now(), attempts = 1, updated_at = now()"
    " WHERE id = ANY(%s)",
    "UPDATE pgmq_worker.jobs SET status = 'succeeded', progress = 100, result = '{}', finished_at = now(),"
    " updated_at = now() WHERE id = ANY(%s)",
)


def lifecycle(conn: psycopg.Connection[Any], bodies: list[dict[str, int]]) -> None:
    """1,000 jobs through their row's life: enqueued, running, succeeded."""
    ids = [job.job_id for job in enqueue_batch(conn, "writes", bodies)]
    for statement in LIFECYCLE:
        conn.execute(statement, (ids,))


def bench_writes(url: str, rounds: int) -> None:
    """enqueue_batch(1000) and the two status updates, with and without the 0021 indexes, interleaved."""
    with_idx: list[float] = []
    without: list[float] = []
    with psycopg.connect(url) as conn:
        conn.autocommit = True
        pgmq.ensure_queue(conn, "writes")
        conn.autocommit = False
        bodies = [{"n": n} for n in range(1000)]
        for _ in range(rounds):
            with_idx.append(timed(lambda: lifecycle(conn, bodies)))
            conn.rollback()
            for name in INDEXES:
                conn.execute(sql.SQL("DROP INDEX pgmq_worker.{}").format(sql.Identifier(name)))
            without.append(timed(lambda: lifecycle(conn, bodies)))
            conn.rollback()  # the indexes are back, the jobs gone
    a, b = statistics.median(with_idx), statistics.median(without)
    print(
        f"\n1,000 jobs enqueued, set running, set succeeded (3 statements) on the 1M-row table:"
        f" with 0021's indexes {a:.1f} ms, without {b:.1f} ms (median of {rounds} interleaved pairs):"
        f" {100 * (a - b) / b:+.1f}%"
    )


def main() -> None:
    """Fill, time, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--write-rounds", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the bench database")
    args = parser.parse_args()
    url = prepare(args.database_url, args.rows, args.keep)
    try:
        with psycopg.connect(url) as conn:
            print(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
        bench_pages(url, args.repeat)
        bench_writes(url, args.write_rounds)
    finally:
        if not args.keep:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(NAME)))


if __name__ == "__main__":
    main()
