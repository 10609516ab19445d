"""The floor under a drain: the worker's own read and settle statements in a bare loop, printed.

    python -m bench.statement_floor --database-url postgresql://postgres@127.0.0.1:5432/postgres

No worker around them (no tasks, leases, contexts or handlers): one connection reads 100
messages and acks them, until the queue is empty, with

- `pgmq.read` + `pgmq.delete` (what bench/raw_loops.py and the pgbench ceiling run),
- the worker's read and ack without job rows (`deliveries.read(job_rows=False)` + `ack_many`),
- the worker's read and ack with job rows (the lookup in the read, the row written at the ack),

each on a new queue of N messages sent with one `send_batch`. It prints messages/s and the CPU
each message cost the client (this process) and the server (the connection's backend, read from
/proc: the server must run on this machine) in microseconds. The server's microseconds are the
floor of a drain: on a machine of C cores, no worker that writes those statements drains faster
than C / (its own CPU + the server's) messages a second. bench/suite.py prints the worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as in bench/enqueue.py

from bench import ceiling
from bench.throughput import choose_server, fresh_database
from worker.store import deliveries, settles

QUEUE = "bench_floor"
BATCH = 100
RAW_READ = "SELECT msg_id FROM pgmq.read(%s, 30, %s)"
RAW_DELETE = "SELECT pgmq.delete(%s, %s::bigint[])"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class FloorRow:
    """One loop's run."""

    what: str
    messages: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None  # None: the server's backend is not a process of this machine

    @property
    def rate(self) -> float:
        """Messages a second."""
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0

    def per_message_us(self, seconds: float | None) -> float | None:
        """Microseconds a message."""
        return seconds / self.messages * 1e6 if self.messages and seconds is not None else None


Step = Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]]


async def raw_step(conn: psycopg.AsyncConnection[Any]) -> int:
    """pgmq.read(q, 30, 100) + pgmq.delete(q, ids)."""
    rows = await (await conn.execute(RAW_READ, (QUEUE, BATCH))).fetchall()
    if rows:
        await conn.execute(RAW_DELETE, (QUEUE, [r[0] for r in rows]))
    return len(rows)


def worker_step(*, job_rows: bool) -> Step:
    """The worker's read and its batched ack, with or without job rows."""
    stamps: dict[str, bool] = {}

    async def step(conn: psycopg.AsyncConnection[Any]) -> int:
        found = await deliveries.read(conn, QUEUE, 30, BATCH, job_rows=job_rows, stamps=stamps)
        if found:
            await settles.ack_many(conn, QUEUE, [(m, None) for m in found], job_rows=job_rows)
        return len(found)

    return step


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process on this machine, in seconds; None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def cpu_of(pid: int) -> Iterator[list[float | None]]:
    """[client seconds, server seconds or None] spent inside the block."""
    spent: list[float | None] = [0.0, None]
    client, server = time.process_time(), process_cpu_s(pid)
    yield spent
    after = process_cpu_s(pid)
    spent[0] = time.process_time() - client
    spent[1] = after - server if after is not None and server is not None else None


async def run_loop(db_url: str, what: str, step: Step, messages: int) -> FloorRow:
    """Fill a new queue, then drain it with `step` on one autocommit connection."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        ceiling.fill(admin, messages, QUEUE)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await step_until_empty(conn, step, 1)  # warm: statements prepared, caches loaded
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        started = time.perf_counter()
        with cpu_of(int(row[0])) as spent:
            done = await step_until_empty(conn, step, None)
        wall = time.perf_counter() - started
    return FloorRow(what, done, wall, spent[0] or 0.0, spent[1])


async def step_until_empty(conn: psycopg.AsyncConnection[Any], step: Step, steps: int | None) -> int:
    """Run `step` until a step finds nothing (or `steps` times); the messages it handled."""
    done = 0
    while steps is None or steps > 0:
        handled = await step(conn)
        done += handled
        if not handled:
            break
        if steps is not None:
            steps -= 1
    return done


LOOPS: tuple[tuple[str, Step], ...] = (
    ("pgmq.read(q,30,100) + pgmq.delete(q, ids)", raw_step),
    ("the worker's read + ack_many, job rows off", worker_step(job_rows=False)),
    ("the worker's read + ack_many, job rows on", worker_step(job_rows=True)),
)


def measure(db_url: str, messages: int) -> list[FloorRow]:
    """Each loop of LOOPS over `messages` on the database (bench/suite.py calls this)."""
    return [asyncio.run(run_loop(db_url, what, step, messages)) for what, step in LOOPS]


def us(value: float | None) -> str:
    """Microseconds, or a dash."""
    return "—" if value is None else f"{value:.1f}"


def print_rows(rows: list[FloorRow]) -> None:
    """The table, with each row's rate as a ratio to the first's."""
    base = rows[0].rate if rows else 0.0
    print(f"{'loop':<58} {'msgs':>7} {'msgs/s':>8} {'ratio':>6} {'client µs':>10} {'server µs':>10}")
    for r in rows:
        ratio = f"{r.rate / base:.2f}" if base else "—"
        client, server = us(r.per_message_us(r.client_cpu_s)), us(r.per_message_us(r.server_cpu_s))
        print(f"{r.what:<58} {r.messages:>7} {r.rate:>8,.0f} {ratio:>6} {client:>10} {server:>10}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages per loop (default 50000)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="server to use")
    parser.add_argument(
        "--without-index",
        action="append",
        default=[],
        metavar="NAME",
        help="drop this index of pgmq_worker.jobs in the run's database first, to price it (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.messages < BATCH:
        parser.error(f"--messages must be at least {BATCH}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = choose_server(args.database_url)
    with fresh_database(server) as db_url:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for name in args.without_index:
                conn.execute(sql.SQL("DROP INDEX pgmq_worker.{}").format(sql.Identifier(name)))
        rows = measure(db_url, args.messages)
    print(f"server: {server.label}; {args.messages:,} messages a loop, {BATCH} a read, one connection")
    if args.without_index:
        print(f"without the indexes {', '.join(args.without_index)} of pgmq_worker.jobs")
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
