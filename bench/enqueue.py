"""Enqueue rates through our API and through POST /jobs, as ratios to raw pgmq; printed, never asserted.

    python bench/enqueue.py
    python bench/enqueue.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/enqueue.py --messages 20000 --clients 1 --clients 4 --clients 16

One invocation creates a fresh database on the server (--database-url, default $DATABASE_URL,
else the embedded PostgreSQL), installs pgmq and the migrations, measures everything below in
that one run, and drops the database at the end.

The queue is `text_stats` (the reference handler's) with the worker's statement-level
insert-notify trigger installed, as it is once a worker has started on the queue: every row, the
raw pgmq ones included, pays for that trigger's NOTIFY. A reference row sends into a queue
without the trigger, to show what it costs.

- single messages, at each --clients (default 1 and 8): raw `pgmq.send` against our
  `enqueue(conn, "text_stats", {"text": ...})` (the message and its job row in one statement).
  Each client is its own process with its own autocommit connection and sends its share of
  --messages one call at a time; the rate is all messages over the wall time from a common
  start barrier to the last client's finish. p50/p99 are per call.
- batches, one client: raw `pgmq.send_batch` against our `enqueue_batch`, --batch-size messages
  a call, --batch-messages in all; p50/p99 are per batch call.
- HTTP: `POST /jobs/text_stats` against a real `python -m web` subprocess (uvicorn, as it
  ships), from --clients client PROCESSES like the raw rows, each with one keep-alive HTTP/1.1
  connection, --requests in all; p50/p99 are per request as the client saw it.

  The HTTP client is deliberately the thinnest one that is still honest HTTP/1.1: the request's
  bytes are built once, written over an asyncio stream, and the answer read as its status line,
  headers and `content-length` bytes of body (every status must be 202). A full client (httpx
  in an earlier version of this row, all connections in one process) spent more CPU per request
  than the server did; on a 2-core machine it took the cores the server and the database needed,
  so the row measured the client. psycopg, which the raw rows use, is just as thin on its side.

Below the table, the CPU the benchmark's own clients (and the web server, from /proc) used while
timed, per message: on a small machine they compete with the database for the same cores.

Each run starts on empty queues (pgmq.purge_queue, DELETE FROM pgmq_worker.jobs, VACUUM) and is
checked afterwards: the queue must hold exactly what was sent and, for our API, one job row per
message. A FAILED line and exit status 1 say a run did not; the timings themselves never fail.
Clients, web server and database share the machine: run twice before believing a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue as queue_module
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from db.pgmq_install import detect
from queues import pgmq
from queues.enqueue import enqueue, enqueue_batch
from queues.names import table_name

if __package__ in (None, ""):
    # `python bench/enqueue.py` puts bench/ on sys.path, not the repo root that holds `bench`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import (
    SERVER_VERSION,
    STOP_TIMEOUT_S,
    Server,
    choose_server,
    fresh_database,
    log_tail,
    percentiles_ms,
    spawned,
    worker_env,
)

QUEUE = "text_stats"  # handlers/text.py's queue: the one `python -m web` accepts {"text": ...} on
PLAIN_QUEUE = "bench_enqueue_plain"  # the same pgmq queue without the insert-notify trigger
TEXT = "The quick brown fox jumps over the lazy dog while the lazy dog sleeps in the afternoon sun."
HOST = "127.0.0.1"

PURGE = "SELECT pgmq.purge_queue(%s)"
DELETE_JOBS = "DELETE FROM pgmq_worker.jobs"
VACUUM = sql.SQL("VACUUM (ANALYZE) pgmq.{}, pgmq_worker.jobs")
QUEUE_LENGTH = sql.SQL("SELECT count(*) FROM pgmq.{}")
JOB_ROWS = "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = %s"

SINGLE_WARMUP = 10  # calls per client before the barrier: psycopg prepares a statement after 5
BATCH_WARMUP = 1
READY_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 900.0

# Which raw row each row's ratio divides by (same clients).
BASELINE = {
    "send": "send",
    "send_plain": "send",
    "enqueue": "send",
    "http": "send",
    "send_batch": "send_batch",
    "enqueue_batch": "send_batch",
}
LABELS = {
    "send": "raw `pgmq.send`",
    "send_plain": "raw `pgmq.send`, queue without the trigger (reference)",
    "enqueue": '`enqueue(conn, "text_stats", payload)`',
    "http": "`POST /jobs/text_stats` (python -m web)",
    "send_batch": "raw `pgmq.send_batch`, {batch} a call",
    "enqueue_batch": "`enqueue_batch`, {batch} a call",
}


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each row sends, and at which client counts."""

    # Single messages per row, over all clients: at 5,000 a row lasted under a second at 8
    # producers and the 8-producer ratio moved by a fifth between runs.
    messages: int = 20_000
    requests: int = 3_000  # POST /jobs requests per row
    batch_messages: int = 100_000  # messages per batch row
    batch_size: int = 1_000  # messages per batch call
    clients: tuple[int, ...] = (1, 8)


@dataclass(frozen=True, slots=True)
class ClientJob:
    """What one client process sends: `count` messages of `kind`, `batch` at a time for batches."""

    kind: str
    db_url: str
    queue: str
    count: int
    batch: int
    port: int = 0  # the web server's, for the "http" kind


@dataclass(frozen=True, slots=True)
class ClientResult:
    """One client's timings (time.perf_counter: CLOCK_MONOTONIC, comparable across processes)."""

    started: float = 0.0
    finished: float = 0.0
    latencies_s: tuple[float, ...] = ()
    cpu_s: float = 0.0  # the client's own CPU time while timed
    error: str | None = None
    statuses: tuple[tuple[int, int], ...] = ()  # (HTTP status, count) for the "http" kind


@dataclass(frozen=True, slots=True)
class Run:
    """One measured row of the table."""

    kind: str
    clients: int
    messages: int
    wall_s: float
    latencies_s: tuple[float, ...]
    failures: tuple[str, ...]
    client_cpu_s: float | None = None  # all clients' CPU time while timed
    server_cpu_s: float | None = None  # the web server's, for HTTP rows

    @property
    def rate(self) -> float:
        """Messages (or requests) a second over the run's wall time."""
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0


# -- the client processes ----------------------------------------------------------------------


def client_main(job: ClientJob, barrier: Any, results: Any) -> None:
    """A client process: connect, warm up, wait for the others, send, report."""
    try:
        results.put(_client_run(job, barrier))
    except KeyboardInterrupt:
        barrier.abort()  # the parent unwinds on its own Ctrl-C
    except Exception as exc:
        barrier.abort()
        results.put(ClientResult(error=f"{job.kind}: {type(exc).__name__}: {exc}"))


def _client_run(job: ClientJob, barrier: Any) -> ClientResult:
    if job.kind == "http":
        return asyncio.run(_http_client_run(job, barrier))
    body = {"text": TEXT}
    bodies = [{"text": TEXT, "top": i % 10 + 1} for i in range(job.batch)]
    with psycopg.connect(job.db_url, autocommit=True) as conn:
        calls: dict[str, Callable[[], object]] = {
            "send": partial(pgmq.send, conn, job.queue, body),
            "send_plain": partial(pgmq.send, conn, job.queue, body),
            "enqueue": partial(enqueue, conn, job.queue, body),
            "send_batch": partial(pgmq.send_batch, conn, job.queue, bodies),
            "enqueue_batch": partial(enqueue_batch, conn, job.queue, bodies),
        }
        call = calls[job.kind]
        per_call = job.batch if job.kind.endswith("_batch") else 1
        for _ in range(BATCH_WARMUP if per_call > 1 else SINGLE_WARMUP):
            call()
        barrier.wait(timeout=READY_TIMEOUT_S)
        latencies = []
        clock = time.perf_counter
        cpu_before = time.process_time()
        started = clock()
        for _ in range(job.count // per_call):
            t0 = clock()
            call()
            latencies.append(clock() - t0)
        finished = clock()
        cpu_s = time.process_time() - cpu_before
    return ClientResult(started, finished, tuple(latencies), cpu_s)


def run_clients(
    kind: str,
    db_url: str,
    queue: str,
    *,
    clients: int,
    messages: int,
    batch: int,
    port: int = 0,
    server_pid: int | None = None,
) -> Run:
    """Start `clients` processes, release them together, and time them to the last one's finish.

    `server_pid`: the web server's, whose CPU time from the release to the last report is noted.
    """
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited connections
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    shares = _split(messages, clients, batch)
    procs = [
        ctx.Process(
            target=client_main,
            args=(ClientJob(kind, db_url, queue, share, batch, port), barrier, results),
            daemon=True,
        )
        for share in shares
    ]
    outcomes: list[ClientResult] = []
    failures: list[str] = []
    server_before = server_after = None
    try:
        for proc in procs:
            proc.start()
        with suppress(threading.BrokenBarrierError):  # a client failed: its error is in `results`
            barrier.wait(timeout=READY_TIMEOUT_S)
        server_before = None if server_pid is None else _process_cpu_s(server_pid)
        for _ in procs:
            try:
                outcomes.append(results.get(timeout=RUN_TIMEOUT_S))
            except queue_module.Empty:
                failures.append(f"a client reported nothing within {RUN_TIMEOUT_S:g}s")
                break
        server_after = None if server_pid is None else _process_cpu_s(server_pid)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failures += [o.error for o in outcomes if o.error]
    timed = [o for o in outcomes if o.error is None]
    if len(timed) != clients:
        return Run(kind, clients, messages, 0.0, (), (*failures, "not every client finished"))
    wall_s = max(o.finished for o in timed) - min(o.started for o in timed)
    latencies = tuple(x for o in timed for x in o.latencies_s)
    cpu_s = sum(o.cpu_s for o in timed)
    statuses: dict[int, int] = {}
    for o in timed:
        for code, n in o.statuses:
            statuses[code] = statuses.get(code, 0) + n
    failures += [f"{n} response(s) with status {code}" for code, n in sorted(statuses.items()) if code != 202]
    server_cpu_s = None if server_before is None or server_after is None else server_after - server_before
    return Run(
        kind,
        clients,
        sum(shares),
        wall_s,
        latencies,
        tuple(failures),
        client_cpu_s=cpu_s,
        server_cpu_s=server_cpu_s,
    )


def _split(total: int, parts: int, unit: int) -> list[int]:
    """`total` in `parts` shares of whole `unit`s, as even as possible."""
    units = max(total // unit, parts)
    return [(units // parts + (1 if i < units % parts else 0)) * unit for i in range(parts)]


# -- HTTP ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def web_server(db_url: str, log_path: Path) -> Iterator[tuple[int, int]]:
    """`python -m web` on the fresh database; yields its port and pid once /healthz answers 200."""
    port = _free_port()
    command = [sys.executable, "-m", "web", "--host", HOST, "--port", str(port), "--import", "handlers"]
    env = worker_env(db_url, {})
    env.pop("SUPABASE_JWT_SECRET", None)  # no JWT: the endpoints are open, as in a private service
    with spawned(command, env, log_path) as proc:
        try:
            base = f"http://{HOST}:{port}"
            _wait_healthy(base, proc, log_path)
            yield port, proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_S)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=3) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"python -m web exited {proc.returncode}\n{log_tail(log_path)}")
            with suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"python -m web was not healthy within {READY_TIMEOUT_S:g}s\n{log_tail(log_path)}")


def run_http(db_url: str, port: int, server_pid: int, clients: int, requests: int) -> Run:
    """POST /jobs/text_stats from `clients` processes, one keep-alive connection each."""
    return run_clients(
        "http", db_url, QUEUE, clients=clients, messages=requests, batch=1, port=port, server_pid=server_pid
    )


def _process_cpu_s(pid: int) -> float | None:
    """Another process's CPU time so far (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def post_request(queue: str, body: bytes) -> bytes:
    """The bytes of one keep-alive `POST /jobs/{queue}` with a JSON body, built once per client."""
    head = (
        f"POST /jobs/{queue} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 answer off the connection (status line, headers, content-length body): its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    length = 0
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split(b" ", 2)[1])


async def _http_client_run(job: ClientJob, barrier: Any) -> ClientResult:
    request = post_request(job.queue, json.dumps({"text": TEXT}).encode())
    reader, writer = await asyncio.open_connection(HOST, job.port)
    statuses: dict[int, int] = {}

    async def post() -> None:
        writer.write(request)
        status = await read_response(reader)
        statuses[status] = statuses.get(status, 0) + 1

    try:
        for _ in range(SINGLE_WARMUP):  # the connection open and the server's pool grown
            await post()
        statuses.clear()
        barrier.wait(timeout=READY_TIMEOUT_S)  # blocks this process's only loop: nothing else runs
        latencies = []
        clock = time.perf_counter
        cpu_before = time.process_time()
        started = clock()
        for _ in range(job.count):
            t0 = clock()
            await post()
            latencies.append(clock() - t0)
        finished = clock()
        cpu_s = time.process_time() - cpu_before
    finally:
        writer.close()
    return ClientResult(started, finished, tuple(latencies), cpu_s, statuses=tuple(statuses.items()))


# -- the database between runs -------------------------------------------------------------------


def prepare_queues(db_url: str) -> None:
    """text_stats with the worker's insert-notify trigger; the reference queue without one."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, QUEUE)
        if not pgmq.ensure_insert_trigger(conn, QUEUE):
            raise RuntimeError(f"may not add the insert-notify trigger to {QUEUE}: not the table's owner")
        pgmq.ensure_queue(conn, PLAIN_QUEUE)


def empty_queues(db_url: str) -> None:
    """No messages and no job rows, and no dead rows left for the next run to step over."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name in (QUEUE, PLAIN_QUEUE):
            conn.execute(PURGE, (name,))
        conn.execute(DELETE_JOBS)
        for name in (QUEUE, PLAIN_QUEUE):
            conn.execute(VACUUM.format(sql.Identifier(table_name(name))))


def check_counts(db_url: str, run: Run, queue: str, *, warmup: int, with_jobs: bool) -> Run:
    """The run with a failure added unless the queue (and jobs) hold exactly what was sent."""
    expected = run.messages + warmup
    with psycopg.connect(db_url, autocommit=True) as conn:
        length = conn.execute(QUEUE_LENGTH.format(sql.Identifier(table_name(queue)))).fetchone()
        jobs = conn.execute(JOB_ROWS, (queue,)).fetchone()
    problems = []
    if length is None or length[0] != expected:
        problems.append(f"{queue} holds {length[0] if length else '?'} messages, expected {expected}")
    want_jobs = expected if with_jobs else 0
    if jobs is None or jobs[0] != want_jobs:
        problems.append(f"{jobs[0] if jobs else '?'} job rows, expected {want_jobs}")
    if not problems:
        return run
    return replace(run, failures=(*run.failures, *problems))


# -- the command ---------------------------------------------------------------------------------


def measure(db_url: str, sizes: Sizes) -> list[Run]:
    """Every row, in one run: singles per client count, batches, then HTTP per client count."""
    runs: list[Run] = []
    prepare_queues(db_url)
    for clients in sizes.clients:
        for kind, queue, with_jobs in (
            ("send", QUEUE, False),
            ("send_plain", PLAIN_QUEUE, False),
            ("enqueue", QUEUE, True),
        ):
            empty_queues(db_url)
            run = run_clients(kind, db_url, queue, clients=clients, messages=sizes.messages, batch=1)
            runs.append(check_counts(db_url, run, queue, warmup=clients * SINGLE_WARMUP, with_jobs=with_jobs))
            _progress(runs[-1])
    for kind, with_jobs in (("send_batch", False), ("enqueue_batch", True)):
        empty_queues(db_url)
        run = run_clients(
            kind, db_url, QUEUE, clients=1, messages=sizes.batch_messages, batch=sizes.batch_size
        )
        warmup = BATCH_WARMUP * sizes.batch_size
        runs.append(check_counts(db_url, run, QUEUE, warmup=warmup, with_jobs=with_jobs))
        _progress(runs[-1])
    with tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp:
        log_path = Path(tmp) / "web.log"
        with web_server(db_url, log_path) as (port, pid):
            for clients in sizes.clients:
                empty_queues(db_url)
                run = run_http(db_url, port, pid, clients, sizes.requests)
                warmup = clients * SINGLE_WARMUP
                runs.append(check_counts(db_url, run, QUEUE, warmup=warmup, with_jobs=True))
                _progress(runs[-1])
    return runs


def _progress(run: Run) -> None:
    print(f"  measured {run.kind:<13} clients={run.clients:<3} {run.rate:>9.0f}/s", file=sys.stderr)


def print_table(runs: list[Run], batch: int) -> None:
    """The markdown table: rate, ratio to raw pgmq.send(_batch) at the same clients, p50/p99."""
    raw = {(r.kind, r.clients): r.rate for r in runs if r.kind in ("send", "send_batch")}
    print("| what | clients | msgs/s | ratio to raw at same clients | p50 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|")
    order = {kind: i for i, kind in enumerate(LABELS)}
    for r in sorted(runs, key=lambda r: (r.kind.endswith("_batch"), r.clients, order[r.kind])):
        base = raw.get((BASELINE[r.kind], r.clients))
        ratio = f"{r.rate / base:.2f}" if base else "-"
        p50, p99 = _percentiles(r.latencies_s)
        label = LABELS[r.kind].format(batch=batch)
        print(f"| {label} | {r.clients} | {r.rate:.0f} | {ratio} | {p50} | {p99} |")
    print()
    print("CPU while timed: cores kept busy (CPU s / wall s) and CPU per message, by process")
    for r in sorted(runs, key=lambda r: (r.kind.endswith("_batch"), r.clients, order[r.kind])):
        print(f"  {r.kind:<13} clients={r.clients:<3} {_cpu_note(r)}")


def _cpu_note(r: Run) -> str:
    parts = []
    for who, cpu_s in (("benchmark clients", r.client_cpu_s), ("web server", r.server_cpu_s)):
        if cpu_s is not None and r.wall_s > 0:
            parts.append(f"{who} {cpu_s / r.wall_s:.2f} cores, {cpu_s / r.messages * 1e6:.0f} us/msg")
    return "; ".join(parts) or "-"


def _percentiles(latencies_s: tuple[float, ...]) -> tuple[str, str]:
    cuts = percentiles_ms(latencies_s, 50, 99)
    return ("-", "-") if cuts is None else (f"{cuts[0]:.2f}", f"{cuts[1]:.2f}")


def print_environment(db_url: str, server: Server, sizes: Sizes) -> None:
    """Server, pgmq, client libraries, CPU and the command line the figures depend on."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(SERVER_VERSION).fetchone()
        features = detect(conn)
    command = " ".join(shlex.quote(_masked(a)) for a in [Path(sys.executable).name, *sys.argv])
    print(f"server   : PostgreSQL {row[0] if row else '?'} ({server.label})")
    print(f"pgmq     : {features.version} ({features.source})")
    print(
        f"python   : {platform.python_version()} ({platform.python_implementation()}), "
        f"psycopg {version('psycopg')}, httpx {version('httpx')}, uvicorn {version('uvicorn')}"
    )
    print(f"cores    : {len(os.sched_getaffinity(0))} (clients, web server and database share them)")
    print(f"command  : {command}")
    print(f"database : {conninfo.conninfo_to_dict(db_url).get('dbname')} (fresh, dropped at the end)")
    print(
        f"sizes    : {sizes.messages} single messages and {sizes.requests} requests per row; "
        f"{sizes.batch_messages} messages in batches of {sizes.batch_size}; "
        f"+{SINGLE_WARMUP} untimed calls per client ({BATCH_WARMUP} batch) before the start barrier"
    )
    print(
        f"queue    : {QUEUE} with the worker's statement-level insert-notify trigger "
        f"(as in production); reference queue {PLAIN_QUEUE} without it"
    )
    print("latency  : per call (per batch call for batches; per request, client side, for HTTP)")
    print()


def _masked(arg: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", arg)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--messages", type=int, default=20_000, help="single messages a row, over all clients (default 20000)"
    )
    parser.add_argument(
        "--requests", type=int, default=3_000, help="POST /jobs requests per row (default 3000)"
    )
    parser.add_argument(
        "--batch-messages", type=int, default=100_000, help="messages per batch row (default 100000)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1_000, help="messages per batch call (default 1000)"
    )
    parser.add_argument(
        "--clients", type=int, action="append", help="concurrent clients; repeat to sweep (default 1 and 8)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="server to use (default: $DATABASE_URL, else the embedded PostgreSQL)",
    )
    args = parser.parse_args(argv)
    args.clients = args.clients or [1, 8]
    if min(args.messages, args.requests, args.batch_messages, args.batch_size, *args.clients) < 1:
        parser.error("sizes and --clients must be >= 1")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a run did not enqueue exactly what it sent."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: clients and web server stopped, database dropped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    server = choose_server(args.database_url)
    sizes = Sizes(args.messages, args.requests, args.batch_messages, args.batch_size, tuple(args.clients))
    with fresh_database(server) as db_url:
        print_environment(db_url, server, sizes)
        runs = measure(db_url, sizes)
        print_table(runs, sizes.batch_size)
        print()
    failures = [f"{r.kind} clients={r.clients}: {f}" for r in runs for f in r.failures]
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: clients and web server stopped, database dropped", file=sys.stderr)
        sys.exit(130)
