"""Bare pgmq consumers in plain psycopg: the reference rows beside the worker's, printed, never asserted.

    python -m bench.raw_loops drain QUEUE [--processes N]   # read(q, 30, 100) + delete(q, ids) until empty
    python -m bench.raw_loops pickup QUEUE notify:0         # pgmq.enable_notify_insert(q, 0) + LISTEN
    python -m bench.raw_loops pickup QUEUE notify:250       # the same with pgmq's default throttle
    python -m bench.raw_loops pickup QUEUE poll:100         # pgmq.read_with_poll, 100 ms interval

What a user without a worker would write: no leases renewed, no retries, no job rows, no
dead-lettering, one autocommit connection per process. bench/throughput.py runs them the way it
runs the worker (`throughput_run(..., command=drain_command(...))`, `latency_run(..., command=...)`)
and they report the same way bench/noop_handlers.py does:

- drain: each process appends {"count", "first", "last"} (time.time() of the first and the last
  message it read) to $BENCH_TIMES_FILE and exits 0 once a read finds the queue empty;
- pickup: "msg_id seconds" per message to $BENCH_LATENCY_FILE, the seconds from its enqueued_at
  to the read that returned it; runs until SIGTERM. The notify modes fall back to a read every
  second (a throttled insert sends no notification); poll mode is pgmq's own read_with_poll.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

READ_BATCH = 100
NOTIFIED_READ = 10
FALLBACK_POLL_S = 1.0
POLL_WAIT_S = 5

READ = "SELECT msg_id, extract(epoch FROM enqueued_at)::float8 FROM pgmq.read(%s, 30, %s)"
READ_WITH_POLL = (
    "SELECT msg_id, extract(epoch FROM enqueued_at)::float8 FROM pgmq.read_with_poll(%s, 30, 1, %s, %s)"
)
DELETE = "SELECT pgmq.delete(%s, %s::bigint[])"
ENABLE_NOTIFY = "SELECT pgmq.enable_notify_insert(%s, %s)"
LISTEN = sql.SQL("LISTEN {}")


def drain_command(queue: str, processes: int) -> list[str]:
    """The command line of a bare drain, for bench/throughput.py to spawn and time."""
    return [sys.executable, "-m", "bench.raw_loops", "drain", queue, "--processes", str(processes)]


def pickup_command(queue: str, mode: str) -> list[str]:
    """The command line of a bare pickup loop (mode notify:MS or poll:MS)."""
    return [sys.executable, "-m", "bench.raw_loops", "pickup", queue, mode]


def drain(queue: str) -> None:
    """Read 100, delete them by id, until a read finds nothing; note count, first and last."""
    count, first, last = 0, None, None
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        while rows := conn.execute(READ, (queue, READ_BATCH)).fetchall():
            last = time.time()
            first = first or last
            count += len(rows)
            conn.execute(DELETE, (queue, [r[0] for r in rows]))
    if times := os.environ.get("BENCH_TIMES_FILE"):
        with Path(times).open("a", encoding="utf-8") as out:
            out.write(json.dumps({"count": count, "first": first, "last": last}) + "\n")


def drain_processes(queue: str, processes: int) -> int:
    """`processes` bare drains at once (forked); 1 unless every one exited 0."""
    children = [
        multiprocessing.get_context("fork").Process(target=drain, args=(queue,)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return 0 if all(child.exitcode == 0 for child in children) else 1


def pickup(queue: str, mode: str) -> None:
    """Take single messages as they come, noting each one's latency; until SIGTERM."""
    kind, _, ms = mode.partition(":")
    out = Path(os.environ["BENCH_LATENCY_FILE"])
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        if kind == "notify":
            conn.execute(ENABLE_NOTIFY, (queue, int(ms)))
            conn.execute(LISTEN.format(sql.Identifier(f"pgmq.q_{queue}.INSERT")))
        while True:
            if kind == "poll":
                rows = conn.execute(READ_WITH_POLL, (queue, POLL_WAIT_S, int(ms))).fetchall()
            else:
                rows = conn.execute(READ, (queue, NOTIFIED_READ)).fetchall()
            now = time.time()
            if rows:
                conn.execute(DELETE, (queue, [r[0] for r in rows]))
                with out.open("a", encoding="utf-8") as lines:
                    lines.writelines(f"{msg_id} {now - enqueued_at:.6f}\n" for msg_id, enqueued_at in rows)
                continue  # there may be more right now
            if kind == "notify":
                for _ in conn.notifies(timeout=FALLBACK_POLL_S, stop_after=1):
                    pass


def _stop(_signum: int, _frame: Any) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run one bare loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    drains = sub.add_parser("drain", help="read(q, 30, 100) + delete(q, ids) until the queue is empty")
    drains.add_argument("queue")
    drains.add_argument("--processes", type=int, default=1)
    pickups = sub.add_parser("pickup", help="single messages as they come, until SIGTERM")
    pickups.add_argument("queue")
    pickups.add_argument("mode", help="notify:MS (enable_notify_insert throttle) or poll:MS (read_with_poll)")
    args = parser.parse_args(argv)
    if args.what == "drain":
        return drain_processes(args.queue, args.processes)
    kind, _, ms = args.mode.partition(":")
    if kind not in ("notify", "poll") or not ms.isdigit():
        parser.error("mode is notify:MS or poll:MS")
    signal.signal(signal.SIGTERM, _stop)
    pickup(args.queue, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
