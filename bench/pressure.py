"""Throughput under pressure: a pinned snapshot, active readers, a burst. Printed, never asserted.

    python bench/pressure.py                      # the long-horizon mode, ~3 minutes
    python bench/pressure.py --phase-s 60 --rate 400
    python bench/pressure.py rounds               # rounds of 10,000 under a held snapshot
    python bench/pressure.py rounds --enqueue enqueue_batch --held-rounds 5
    python bench/pressure.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

Each invocation creates a fresh database (--dsn, default $DATABASE_URL, else the embedded
PostgreSQL), installs pgmq and the migrations, and drops it at the end (bench/throughput.py's
machinery: a real `pgmq-worker run` subprocess on bench/noop_handlers.py's no-op queue).

rounds: N no-op jobs sent in one send_batch (or enqueue_batch: job rows written at enqueue), drained
by `pgmq-worker run --burst`, timed from the first handler start to the worker's exit. First the
clean rounds; then one REPEATABLE READ session takes a snapshot and holds it (idle in transaction)
through the held rounds, so no row deleted or updated since can be vacuumed. Per round: jobs/s,
the ratio to the clean rate (the median clean round), and the queue table's and
pgmq_worker.jobs's total size and dead rows (pg_stat_user_tables.n_dead_tup).

horizon (the default): one worker runs throughout while a producer sends at a fixed rate, through
five phases of --phase-s each: clean; a snapshot held idle in transaction; active readers (long
SELECTs on the queue and the jobs table, one always running); a burst at --burst-x times the rate;
recovery (nothing held). Per phase: completions/s, pickup p50/p99 (job row started_at - created_at
of the jobs sent in the phase) and the tables' sizes and dead rows at its end, with each as a
ratio to the clean phase. The worker is stopped and the database dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput
from queues import pgmq
from queues.enqueue import enqueue_batch
from queues.names import table_name

QUEUE = throughput.QUEUES["async"]
JOBS = "pgmq_worker.jobs"
SIZES = (
    "SELECT c.oid::regclass::text, coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0),"
    " pg_total_relation_size(c.oid), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_hot_upd, 0),"
    " pg_relation_size(c.oid)"
    " FROM unnest(%s::regclass[]) AS t(r)"
    " JOIN pg_class AS c ON c.oid = t.r LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid"
)
HOLD_SNAPSHOT = "SELECT count(*) FROM pgmq_worker.jobs"  # the first statement takes the snapshot
BACKEND_XMIN = "SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# Phase windows by the server's clock, as the job rows are stamped.
PHASE_JOBS = (
    "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL),"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))"
    " FROM pgmq_worker.jobs WHERE queue = %s AND created_at >= %s AND created_at < %s"
)
FINISHED_IN = (
    "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = %s AND finished_at >= %s AND finished_at < %s"
)
NOW = "SELECT clock_timestamp()"
# Buffer visits in this database so far: what a round's statements touched, whatever the CPU noise.
BUFFERS = "SELECT blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()"
# An analytics query: a scan of the table that takes about `s` seconds, its snapshot held throughout.
READER = "SELECT count(*) FROM {}, pg_sleep_for(make_interval(secs => %s))"


@dataclass(frozen=True, slots=True)
class TableSize:
    """One table's size and row counts, by the statistics collector."""

    dead: int
    live: int
    bytes: int
    updates: int
    hot_updates: int  # of those, heap-only (no new index entries)
    heap_bytes: int  # the table's own pages: bytes less these is its indexes (and TOAST)


def sizes(conn: psycopg.Connection[Any], queue: str) -> dict[str, TableSize]:
    """The queue table's and the jobs table's sizes: {"queue": ..., "jobs": ...}."""
    conn.execute(throughput.CLEAR_SNAPSHOT)
    rows = conn.execute(SIZES, ([f"pgmq.{table_name(queue)}", JOBS],)).fetchall()
    by_name = {r[0]: TableSize(*(int(v) for v in r[1:])) for r in rows}
    return {"queue": by_name[f"pgmq.{table_name(queue)}"], "jobs": by_name[JOBS]}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextmanager
def held_snapshot(db_url: str) -> Iterator[str]:
    """A REPEATABLE READ session idle in transaction on its first snapshot; yields its xmin."""
    with psycopg.connect(db_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute(HOLD_SNAPSHOT)
        row = conn.execute(BACKEND_XMIN).fetchone()
        try:
            yield str(row[0] if row else "?")
        finally:
            conn.rollback()


# -- rounds -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    """One round: its drain rate, and the tables afterwards."""

    label: str
    rate: float | None
    wall_s: float
    buffers: int  # buffer visits in the database during the round
    tables: dict[str, TableSize]
    failures: tuple[str, ...]


def send(conn: psycopg.Connection[Any], queue: str, n: int, how: str) -> None:
    """n no-op messages in one statement: plain pgmq.send_batch, or enqueue_batch with job rows."""
    bodies = [{"i": i} for i in range(n)]
    for start in range(0, n, 10_000):
        chunk = bodies[start : start + 10_000]
        if how == "send_batch":
            pgmq.send_batch(conn, queue, chunk)
        else:
            enqueue_batch(conn, queue, chunk)


def drain_round(db_url: str, args: argparse.Namespace, label: str) -> Round:
    """Send --messages, drain them with a burst worker; the rate from the first handler start to exit."""
    queue, n, concurrency = QUEUE, args.messages, args.concurrency
    with psycopg.connect(db_url, autocommit=True) as conn:
        send(conn, queue, n, args.enqueue)
        throughput.settle_stats(conn)
        before = _buffers(conn)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pgmqw-pressure-") as tmp:
        times_file, log_path = Path(tmp) / "times.json", Path(tmp) / "worker.log"
        env = throughput.worker_env(db_url, {"BENCH_TIMES_FILE": str(times_file)})
        started = time.perf_counter()
        with throughput.spawned(
            throughput.worker_command(queue, concurrency, burst=True), env, log_path
        ) as p:
            try:
                code: int | None = p.wait(timeout=throughput.WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            exit_at, wall_s = time.time(), time.perf_counter() - started
        if code != 0:
            failures.append(f"worker exited {code}\n{throughput.log_tail(log_path)}")
        parts = [json.loads(x) for x in times_file.read_text().splitlines()] if times_file.exists() else []
    firsts = [p["first"] for p in parts if p.get("first") is not None]
    rate = n / (exit_at - min(firsts)) if firsts else None
    with psycopg.connect(db_url, autocommit=True) as conn:
        failures += throughput.queue_failures(conn, queue)
        throughput.settle_stats(conn)
        buffers = _buffers(conn) - before
        tables = sizes(conn, queue)
    return Round(label, rate, wall_s, buffers, tables, tuple(failures))


def _buffers(conn: psycopg.Connection[Any]) -> int:
    conn.execute(throughput.CLEAR_SNAPSHOT)
    row = conn.execute(BUFFERS).fetchone()
    return int(row[0]) if row else 0


def print_round(r: Round, n: int, clean: float | None, base: dict[str, TableSize]) -> None:
    """One line: rate, ratio to clean, the tables (size, growth since the held rounds began, dead)."""
    ratio = f"{r.rate / clean:5.2f}x" if r.rate and clean else "    -"
    cells = [f"{r.label:<9}", f"{r.rate or 0:8,.0f} jobs/s", ratio, f"{r.buffers / n:5.1f} buffers/job"]
    for key in ("queue", "jobs"):
        t = r.tables[key]
        grew = t.bytes - base[key].bytes
        heap = t.heap_bytes - base[key].heap_bytes
        hot = f" HOT {t.hot_updates / t.updates:4.0%}" if t.updates else ""
        cells.append(f"{key} {_mb(t.bytes):>9} (+{_mb(grew):>8}, heap +{_mb(heap)}) dead {t.dead:>7,}{hot}")
    print("  ".join(cells), flush=True)


def rounds_main(args: argparse.Namespace, db_url: str) -> list[str]:
    """The rounds mode; returns failures."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, QUEUE)
        start = sizes(conn, QUEUE)
    print(
        f"rounds of {args.messages:,} no-op jobs ({args.enqueue}), "
        f"run --burst --concurrency {args.concurrency}"
    )
    done: list[Round] = []
    for i in range(args.clean_rounds):
        done.append(drain_round(db_url, args, f"clean {i + 1}"))
        print_round(done[-1], args.messages, None, start)
    clean_rates = [r.rate for r in done if r.rate]
    clean = statistics.median(clean_rates) if clean_rates else None
    print(f"clean rate (median of {len(clean_rates)}): {clean or 0:,.0f} jobs/s")
    with psycopg.connect(db_url, autocommit=True) as conn:
        base = sizes(conn, QUEUE)
    held: list[Round] = []
    with held_snapshot(db_url) as xmin:
        print(f"snapshot held (REPEATABLE READ, idle in transaction, xmin {xmin})")
        for i in range(args.held_rounds):
            held.append(drain_round(db_url, args, f"held {i + 1}"))
            print_round(held[-1], args.messages, clean, base)
    if held and held[-1].rate and clean:
        last = held[-1]
        grew = {k: last.tables[k].bytes - base[k].bytes for k in ("queue", "jobs")}
        print(
            f"summary: held round {len(held)} at {last.rate / clean:.2f}x clean; over the held rounds "
            f"the queue table grew {_mb(grew['queue'])}, pgmq_worker.jobs grew {_mb(grew['jobs'])} "
            f"({grew['jobs'] / (args.messages * len(held)):.0f} bytes a job)"
        )
    return [f"{r.label}: {f}" for r in done + held for f in r.failures]


# -- horizon ------------------------------------------------------------------------------------


class Producer(threading.Thread):
    """Sends at `rate` messages a second in ticks of 50 ms (send_batch), until stopped."""

    TICK_S = 0.05

    def __init__(self, db_url: str, queue: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.db_url, self.queue, self.rate = db_url, queue, rate
        self.stop = threading.Event()
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        """Keep the rate by the clock: each tick sends what is due since the start."""
        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                started, owed = time.monotonic(), 0.0
                last = started
                while not self.stop.wait(self.TICK_S):
                    now = time.monotonic()
                    owed += (now - last) * self.rate
                    last = now
                    n = int(owed)
                    if n:
                        pgmq.send_batch(conn, self.queue, [{"i": self.sent + i} for i in range(n)])
                        self.sent += n
                        owed -= n
        except psycopg.Error as exc:
            self.error = str(exc)


class Readers(threading.Thread):
    """Long SELECTs on the queue and the jobs table, back to back, one always running."""

    def __init__(self, db_url: str, queue: str, query_s: float) -> None:
        super().__init__(daemon=True)
        self.db_url, self.query_s = db_url, query_s
        self.tables = [f"pgmq.{table_name(queue)}", JOBS]
        self.stop = threading.Event()
        self.queries = 0

    def run(self) -> None:
        """Alternate between the two tables until stopped."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop.is_set():
                table = self.tables[self.queries % 2]
                conn.execute(READER.format(table), (self.query_s,))  # type: ignore[arg-type]
                self.queries += 1


@dataclass(frozen=True, slots=True)
class Window:
    """One phase as it ran: its span by the server's clock, what was sent, what was left."""

    name: str
    begin: datetime
    end: datetime
    sent: int
    backlog: int
    tables: dict[str, TableSize]


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase's figures."""

    name: str
    sent: int
    completed_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    backlog: int
    tables: dict[str, TableSize]


def horizon_main(args: argparse.Namespace, db_url: str) -> list[str]:
    """The long-horizon mode; returns failures."""
    failures: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, QUEUE)
    names = ["clean", "idle-in-tx", "readers", "burst", "recovery"]
    print(
        f"horizon: {len(names)} phases of {args.phase_s:g} s, producer {args.rate:g} msgs/s "
        f"(burst {args.burst_x:g}x), one worker --concurrency {args.concurrency}"
    )
    windows: list[Window] = []
    with tempfile.TemporaryDirectory(prefix="pgmqw-pressure-") as tmp:
        log_path = Path(tmp) / "worker.log"
        env = throughput.worker_env(db_url, {})
        command = throughput.worker_command(QUEUE, args.concurrency, burst=False)
        with (
            throughput.spawned(command, env, log_path) as proc,
            psycopg.connect(db_url, autocommit=True) as conn,
        ):
            _warm_up(conn, proc)
            for name in names:
                rate = args.rate * (args.burst_x if name == "burst" else 1)
                producer = Producer(db_url, QUEUE, rate)
                begin = conn.execute(NOW).fetchone()[0]  # type: ignore[index]
                with _pressure(name, db_url, args):
                    producer.start()
                    time.sleep(args.phase_s)
                    producer.stop.set()
                    producer.join()
                    end = conn.execute(NOW).fetchone()[0]  # type: ignore[index]
                    backlog = pgmq.metrics(conn, QUEUE).depth
                    windows.append(Window(name, begin, end, producer.sent, backlog, sizes(conn, QUEUE)))
                if producer.error:
                    failures.append(f"{name}: producer failed: {producer.error}")
                if proc.poll() is not None:
                    failures.append(f"worker exited {proc.returncode}\n{throughput.log_tail(log_path)}")
                    break
                print(f"  {name}: sent {producer.sent:,}, backlog at the end {backlog:,}", flush=True)
            _wait_drained(conn, QUEUE, timeout_s=max(120.0, args.phase_s * 4))
            phases = [_phase(conn, w) for w in windows]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=throughput.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                failures.append("worker did not stop on SIGTERM")
        failures += throughput.queue_failures(psycopg.connect(db_url, autocommit=True), QUEUE)
    print_phases(phases)
    return failures


@contextmanager
def _pressure(name: str, db_url: str, args: argparse.Namespace) -> Iterator[None]:
    """What the phase does to the database while the producer runs."""
    if name == "idle-in-tx":
        with held_snapshot(db_url):
            yield
    elif name == "readers":
        readers = [Readers(db_url, QUEUE, args.reader_s) for _ in range(2)]
        for i, r in enumerate(readers):
            if i:
                time.sleep(args.reader_s / 2)  # staggered: a snapshot always open
            r.start()
        try:
            yield
        finally:
            for r in readers:
                r.stop.set()
            for r in readers:
                r.join()
    else:
        yield


def _warm_up(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes]) -> None:
    """Wait until the worker has started and run one job, so the clean phase is not its start-up."""
    pgmq.send_batch(conn, QUEUE, [{"warm": True}])
    deadline = time.monotonic() + throughput.READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None and pgmq.metrics(conn, QUEUE).depth:
        time.sleep(0.1)


def _wait_drained(conn: psycopg.Connection[Any], queue: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pgmq.metrics(conn, queue).depth:
        time.sleep(0.2)


def _phase(conn: psycopg.Connection[Any], w: Window) -> Phase:
    row = conn.execute(PHASE_JOBS, (QUEUE, w.begin, w.end)).fetchone()
    done = conn.execute(FINISHED_IN, (QUEUE, w.begin, w.end)).fetchone()
    seconds = (w.end - w.begin).total_seconds()
    p50, p99 = (row[1], row[2]) if row else (None, None)
    return Phase(
        w.name,
        w.sent,
        (int(done[0]) if done else 0) / seconds,
        None if p50 is None else p50 * 1000,
        None if p99 is None else p99 * 1000,
        w.backlog,
        w.tables,
    )


def print_phases(phases: list[Phase]) -> None:
    """The table: each figure and its ratio to the clean phase."""
    if not phases:
        return
    clean = phases[0]

    def cell(value: float | None, base: float | None, spec: str) -> str:
        if value is None:
            return "-"
        ratio = f" ({value / base:.2f}x)" if base else ""
        return f"{value:{spec}}{ratio}"

    print()
    print(
        "| phase | sent | done/s | pickup p50 ms | pickup p99 ms | backlog "
        "| queue size, dead | jobs size, dead |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        q, j = p.tables["queue"], p.tables["jobs"]
        cq, cj = clean.tables["queue"], clean.tables["jobs"]
        print(
            f"| {p.name} | {p.sent:,} | {cell(p.completed_per_s, clean.completed_per_s, ',.0f')} "
            f"| {cell(p.p50_ms, clean.p50_ms, '.1f')} | {cell(p.p99_ms, clean.p99_ms, '.1f')} "
            f"| {p.backlog:,} "
            f"| {_mb(q.bytes)} ({q.bytes / cq.bytes:.1f}x), {q.dead:,} "
            f"| {_mb(j.bytes)} ({j.bytes / cj.bytes:.1f}x), {j.dead:,} |"
        )


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", choices=("horizon", "rounds"), default="horizon")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or None, help="server to use")
    parser.add_argument("--concurrency", type=int, default=100, help="worker --concurrency (default 100)")
    rounds = parser.add_argument_group("rounds")
    rounds.add_argument("--messages", type=int, default=10_000, help="jobs per round (default 10000)")
    rounds.add_argument("--clean-rounds", type=int, default=2, help="rounds before the snapshot (default 2)")
    rounds.add_argument("--held-rounds", type=int, default=5, help="rounds under the snapshot (default 5)")
    rounds.add_argument("--enqueue", choices=("send_batch", "enqueue_batch"), default="send_batch")
    horizon = parser.add_argument_group("horizon")
    horizon.add_argument("--phase-s", type=float, default=36.0, help="seconds per phase (default 36)")
    horizon.add_argument("--rate", type=float, default=150.0, help="producer msgs/s (default 150)")
    horizon.add_argument("--burst-x", type=float, default=10.0, help="the burst's rate multiple (default 10)")
    horizon.add_argument(
        "--reader-s", type=float, default=4.0, help="each reader query's seconds (default 4)"
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.clean_rounds, args.concurrency) < 1 or args.held_rounds < 0:
        parser.error("--messages, --clean-rounds and --concurrency must be >= 1")
    if args.phase_s <= 0 or args.rate <= 0 or args.burst_x <= 0 or args.reader_s <= 0:
        parser.error("--phase-s, --rate, --burst-x and --reader-s must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mode; 1 when the worker failed or left messages behind."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, throughput._interrupt)
    server = throughput.choose_server(args.dsn)
    with throughput.fresh_database(server) as db_url:
        throughput.print_environment(db_url, server, QUEUE, {})
        failures = rounds_main(args, db_url) if args.mode == "rounds" else horizon_main(args, db_url)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: worker stopped, database dropped", file=sys.stderr)
        sys.exit(130)
