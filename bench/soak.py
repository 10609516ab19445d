"""Soak: N no-op jobs through a running worker with a short retention; the jobs table stays bounded.

    python bench/soak.py --jobs 1000000 --retention 20 --interval 5
    python bench/soak.py --jobs 200000 --cost-rounds 3 --cost-jobs 30000 --cost-backlog 100000

Soak: a fresh database; a real `pgmq-worker run` (bench/noop_handlers.py, job rows on) with
PGMQ_WORKER_RETENTION=--retention seconds; this process enqueues with `enqueue_batch` (job rows
and messages, --chunk a statement), keeping at most --backlog messages waiting, and every
--sample seconds prints the jobs processed so far, the jobs table's row count, its
pg_total_relation_size (heap, indexes, TOAST) and job_steps'. Without retention the row count
would be the number processed; bounded, it stays near rate x (retention + interval).

Pruner cost (--cost-rounds R): drains of --cost-jobs jobs by `pgmq-worker run --burst`, the
pruner on (retention 1 h, interval 1 s, with --cost-backlog finished rows two days old to delete
while the drain runs) and off (PGMQ_WORKER_RETENTION=0, the same old rows present), interleaved
on/off R times; prints each drain's jobs/s and the on/off ratio of the medians. Figures, never
assertions; the machine is shared: believe ratios within one run, not absolute rates.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import (
    QUEUES,
    _interrupt,
    choose_server,
    fresh_database,
    log_tail,
    reset_queue,
    spawned,
    worker_command,
    worker_env,
)
from queues import enqueue_batch

QUEUE = QUEUES["async"]
SIZES = (
    "SELECT (SELECT count(*) FROM pgmq_worker.jobs), pg_total_relation_size('pgmq_worker.jobs'),"
    " pg_total_relation_size('pgmq_worker.job_steps')"
)
DEPTH = "SELECT count(*) FROM pgmq.q_bench_noop"
AUTOVACUUM = "SELECT setting = 'on' FROM pg_settings WHERE name = 'autovacuum'"
VACUUM = ("VACUUM pgmq_worker.jobs", "VACUUM pgmq.q_bench_noop")
# Finished rows two days old, for the pruner to delete during a drain (not on the bench queue:
# the drain's own rows are not pruned meanwhile, so both arms do the same work on the queue).
OLD_ROWS = (
    "INSERT INTO pgmq_worker.jobs (queue, msg_id, status, finished_at, created_at)"
    " SELECT 'soak_old', g, 'succeeded', now() - interval '2 days', now() - interval '2 days'"
    " FROM generate_series(%s::bigint, %s::bigint) AS g"
)
CLEAR_OLD = "DELETE FROM pgmq_worker.jobs WHERE queue = 'soak_old'"
CLEAR_DONE = "DELETE FROM pgmq_worker.jobs WHERE queue = %s"


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MB"


def soak(url: str, args: argparse.Namespace, logs: Path) -> int:
    """Push args.jobs through a running worker; print the table's size over time. 0 when all ran."""
    with psycopg.connect(url, autocommit=True) as conn:
        reset_queue(conn, QUEUE)
        env = worker_env(
            url,
            {
                "PGMQ_WORKER_RETENTION": str(args.retention),
                "PGMQ_WORKER_RETENTION_INTERVAL": str(args.interval),
            },
        )
        command = worker_command(QUEUE, args.concurrency, burst=False)
        print(f"soak: {args.jobs:,} jobs, retention {args.retention} s, prune every {args.interval} s")
        print(f"{'t_s':>7} {'processed':>10} {'jobs/s':>7} {'rows':>9} {'jobs size':>11} {'steps size':>11}")
        autovacuum = bool(conn.execute(AUTOVACUUM).fetchone()[0])  # type: ignore[index]
        vacuum_every = 0.0 if autovacuum else args.vacuum_every
        print(
            "autovacuum is on"
            if autovacuum
            else f"autovacuum is OFF on this server: the bench runs VACUUM every {vacuum_every:g} s"
            + (" (never: the table keeps every deleted row's space)" if not vacuum_every else "")
        )
        sent = vacuums = 0
        started = time.monotonic()
        next_sample = started
        next_vacuum = started + vacuum_every
        peak_rows = peak_size = 0
        with spawned(command, env, logs / "soak-worker.log") as proc:
            while True:
                depth = int(conn.execute(DEPTH).fetchone()[0])  # type: ignore[index]
                if sent < args.jobs and depth < args.backlog:
                    n = min(args.chunk, args.jobs - sent)
                    enqueue_batch(conn, QUEUE, [{"i": sent + i} for i in range(n)])
                    sent += n
                    continue
                now = time.monotonic()
                if vacuum_every and now >= next_vacuum:
                    for statement in VACUUM:
                        conn.execute(statement)
                    vacuums += 1
                    next_vacuum = now + vacuum_every
                done = sent - depth
                if now >= next_sample or (sent >= args.jobs and depth == 0):
                    rows, size, steps = conn.execute(SIZES).fetchone()  # type: ignore[misc]
                    peak_rows, peak_size = max(peak_rows, rows), max(peak_size, size)
                    rate = done / max(now - started, 1e-9)
                    print(
                        f"{now - started:>7.1f} {done:>10,} {rate:>7,.0f} {rows:>9,} {mb(size):>11}"
                        f" {mb(steps):>11}"
                    )
                    next_sample = now + args.sample
                if sent >= args.jobs and depth == 0:
                    break
                if proc.poll() is not None:
                    print("FAILED: the worker exited\n" + log_tail(logs / "soak-worker.log"))
                    return 1
                time.sleep(0.2)
            # One more pruning interval or two: what stays once the traffic stops.
            time.sleep(args.retention + 2 * args.interval)
            rows, size, _ = conn.execute(SIZES).fetchone()  # type: ignore[misc]
            proc.terminate()
            proc.wait(timeout=60)
        elapsed = time.monotonic() - started
        print(
            f"soak done: {sent:,} jobs in {elapsed:,.0f} s ({sent / elapsed:,.0f} jobs/s); jobs table peak "
            f"{peak_rows:,} rows / {mb(peak_size)}; {args.retention + 2 * args.interval} s after the last "
            "job: "
            f"{rows:,} rows / {mb(size)}; {vacuums} VACUUMs by the bench"
        )
    return 0


def drain(url: str, args: argparse.Namespace, logs: Path, *, pruner: bool, round_no: int) -> float:
    """One burst drain of args.cost_jobs jobs, with old rows to prune; its jobs/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        reset_queue(conn, QUEUE)
        conn.execute(CLEAR_DONE, (QUEUE,))
        conn.execute(CLEAR_OLD)
        conn.execute(OLD_ROWS, (1, args.cost_backlog))
        conn.execute("VACUUM ANALYZE pgmq_worker.jobs")
        for start in range(0, args.cost_jobs, args.chunk):
            n = min(args.chunk, args.cost_jobs - start)
            enqueue_batch(conn, QUEUE, [{"i": start + i} for i in range(n)])
        settings = (
            {"PGMQ_WORKER_RETENTION": "3600", "PGMQ_WORKER_RETENTION_INTERVAL": "1"}
            if pruner
            else {"PGMQ_WORKER_RETENTION": "0"}
        )
        command = worker_command(QUEUE, args.concurrency, burst=True)
        log = logs / f"cost-{round_no}-{'on' if pruner else 'off'}.log"
        began = time.monotonic()
        with spawned(command, worker_env(url, settings), log) as proc:
            code = proc.wait(timeout=900)
        wall = time.monotonic() - began
        left = int(
            conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'soak_old'").fetchone()[0]
        )  # type: ignore[index]
        if code != 0:
            print("FAILED: the worker exited " + str(code) + "\n" + log_tail(log))
        print(
            f"  round {round_no} pruner {'on ' if pruner else 'off'}: {args.cost_jobs:,} jobs in "
            f"{wall:.2f} s "
            f"= {args.cost_jobs / wall:,.0f} jobs/s; old rows left {left:,} of {args.cost_backlog:,}"
        )
        return args.cost_jobs / wall


def cost(url: str, args: argparse.Namespace, logs: Path) -> None:
    """Interleaved drains with the pruner on and off; the ratio of the medians."""
    print(
        f"pruner cost: {args.cost_rounds} x (on, off) drains of {args.cost_jobs:,} jobs, "
        f"{args.cost_backlog:,} old rows to prune"
    )
    on: list[float] = []
    off: list[float] = []
    for r in range(args.cost_rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for pruner in order:
            (on if pruner else off).append(drain(url, args, logs, pruner=pruner, round_no=r + 1))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"median jobs/s: pruner on {m_on:,.0f}, off {m_off:,.0f}; on/off = {m_on / m_off:.3f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", help="Server to create the bench database on (default $DATABASE_URL).")
    p.add_argument("--jobs", type=int, default=1_000_000, help="Jobs through the soak (0: skip it).")
    p.add_argument("--retention", type=int, default=20, help="Seconds finished rows are kept.")
    p.add_argument("--interval", type=int, default=5, help="Seconds between pruning passes.")
    p.add_argument("--chunk", type=int, default=5000, help="Jobs per enqueue_batch statement.")
    p.add_argument("--backlog", type=int, default=20000, help="At most this many messages waiting.")
    p.add_argument("--sample", type=float, default=10.0, help="Seconds between size samples.")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--cost-rounds", type=int, default=0, help="Pruner on/off drain pairs (0: skip).")
    p.add_argument("--cost-jobs", type=int, default=30000, help="Jobs per cost drain.")
    p.add_argument("--cost-backlog", type=int, default=100000, help="Old finished rows to prune per drain.")
    p.add_argument(
        "--vacuum-every",
        type=float,
        default=30.0,
        help="Where the server's autovacuum is off (CI's is), VACUUM the jobs and queue tables this "
        "often, as autovacuum would (0: never; then the table grows whatever is deleted).",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped bench still stops its worker and drops its database
    server = choose_server(args.database_url or os.environ.get("DATABASE_URL"))
    print(f"server: {server.label}")
    status = 0
    with tempfile.TemporaryDirectory(prefix="pgmqw-soak-") as tmp, fresh_database(server) as url:
        logs = Path(tmp)
        if args.jobs > 0:
            status = soak(url, args, logs)
        if args.cost_rounds > 0:
            cost(url, args, logs)
    return status


if __name__ == "__main__":
    sys.exit(main())
