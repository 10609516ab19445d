"""Pickup latency of single urgent messages while the same worker drains a bulk backlog (printed only).

    python bench/priority.py                                   # 50,000 no-op bulk jobs, 2 rounds
    python bench/priority.py --bulk 50000 --rounds 3 --bulk-sleep-ms 1 --guard 0.05
    python bench/priority.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/priority.py --private /dev/shm     # a server of its own, its WAL off the disk

One `pgmq-worker run` subprocess (bench/priority_handlers.py) serves `bench_urgent` and
`bench_bulk`. Per run: the worker starts on empty queues and handles a warm-up urgent message;
then one pgmq.send_batch puts the bulk backlog in, and single urgent messages follow every
--spacing-ms until the backlog is gone (its depth is checked every --depth-every sends). The
urgent handler records now - enqueued_at (one machine, one clock); only urgent messages sent
while the backlog was still there count. Then SIGTERM.

Modes, interleaved round by round in one run so the machine's load hits them alike:
- `priority`: `@handler(bench_urgent, priority=10)`, strict (PGMQ_WORKER_PRIORITY_SHARE=0);
- `rotation`: both queues at priority 0, so the worker reads them in turn (what it did before);
- `priority + guard S` (with --guard S): priority with the starvation guard's share S.
The bulk drain rate (backlog / time to drain it) shows what reading the urgent queue first costs.

--private DIR runs on a private embedded PostgreSQL with its data under DIR (deleted afterwards):
on a shared machine the shared server's WAL flushes, which other work queues up behind, then
stop setting the pace (under /dev/shm no fsync reaches a disk at all: say so with the figures).

The machinery (fresh database, subprocess worker, latency file, percentiles) is bench/throughput.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):
    # `python bench/priority.py` puts bench/ on sys.path, not the repo root that holds `bench`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput as tp
from queues import pgmq

HANDLER_MODULE = "bench.priority_handlers"
URGENT, BULK = "bench_urgent", "bench_bulk"  # bench/priority_handlers.py's queues
SEND_CHUNK = 10_000  # bulk messages per send_batch statement


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of running the worker: its urgent queue's priority and the guard's share."""

    label: str
    priority: int
    share: float

    def env(self) -> dict[str, str]:
        """The worker's environment for this mode."""
        return {"BENCH_URGENT_PRIORITY": str(self.priority), "PGMQ_WORKER_PRIORITY_SHARE": str(self.share)}


@dataclass(frozen=True, slots=True)
class Run:
    """One mode's run: the urgent latencies during the backlog, and how fast the backlog drained."""

    mode: str
    round: int
    latencies_s: tuple[float, ...]
    drain_s: float | None
    load: float  # the machine's 1-minute load average as the run ended (it is shared)
    failures: tuple[str, ...]


def worker_command(concurrency: int) -> list[str]:
    """`pgmq-worker run` on both bench queues (bench/throughput.py's console script lookup)."""
    command = tp.worker_command(URGENT, concurrency, burst=False)
    command[command.index(tp.HANDLER_MODULE)] = HANDLER_MODULE
    return [*command, "--queue", BULK]


def send_backlog(conn: psycopg.Connection[Any], count: int) -> None:
    """The bulk backlog, in a few large send_batch statements."""
    for start in range(0, count, SEND_CHUNK):
        pgmq.send_batch(conn, BULK, [{"i": i} for i in range(start, min(count, start + SEND_CHUNK))])


def bulk_depth(conn: psycopg.Connection[Any]) -> int:
    """Messages left in the bulk queue, visible or not (the ones running count until acked)."""
    return pgmq.metrics(conn, BULK).depth


def run_mode(db_url: str, mode: Mode, round_no: int, args: argparse.Namespace) -> Run:
    """Start a worker, warm it up, send the backlog, then single urgent messages until it is drained."""
    failures: list[str] = []
    spacing_s = args.spacing_ms / 1000
    with psycopg.connect(db_url, autocommit=True) as conn:
        tp.reset_queue(conn, URGENT)
        tp.reset_queue(conn, BULK)
    with tempfile.TemporaryDirectory(prefix="pgmqw-bench-") as tmp:
        latency_file, log_path = Path(tmp) / "latency.txt", Path(tmp) / "worker.log"
        settings: Mapping[str, str] = {
            "BENCH_LATENCY_FILE": str(latency_file),
            "BENCH_BULK_SLEEP_MS": str(args.bulk_sleep_ms),
            **mode.env(),
            **args.worker_env,
        }
        env = tp.worker_env(db_url, settings)
        counted: list[int] = []  # urgent messages sent while the backlog was still there
        drain_s: float | None = None
        with (
            tp.spawned(worker_command(args.concurrency), env, log_path) as proc,
            psycopg.connect(db_url, autocommit=True) as conn,
        ):
            warmup = pgmq.send(conn, URGENT, {"warmup": True})
            if warmup in tp.wait_for(latency_file, {warmup}, proc, tp.READY_TIMEOUT_S):
                time.sleep(1.0)  # the listener settles: start-up is not latency
                backlog_at = time.perf_counter()
                send_backlog(conn, args.bulk)
                pending: list[int] = []
                next_at = time.perf_counter()
                while proc.poll() is None and time.perf_counter() - backlog_at < args.max_s:
                    pending.append(pgmq.send(conn, URGENT, {"i": len(counted) + len(pending)}))
                    if len(pending) >= args.depth_every:
                        if bulk_depth(conn) == 0:
                            drain_s = time.perf_counter() - backlog_at
                            break  # the last few may have been sent after the backlog was gone
                        counted += pending
                        pending = []
                    next_at += spacing_s
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                else:
                    failures.append(f"the bulk backlog was not drained within {args.max_s:g}s")
                tp.wait_for(latency_file, set(counted) | set(pending), proc, 30.0)
            else:
                failures.append(f"the worker handled no warm-up message ({tp.log_tail(log_path)})")
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = proc.wait(timeout=tp.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                failures.append(f"worker exited {code} after SIGTERM\n{tp.log_tail(log_path)}")
            failures += tp.queue_failures(conn, URGENT) + tp.queue_failures(conn, BULK)
        seen = tp.read_latencies(latency_file)
    missing = [m for m in counted if m not in seen]
    if missing:
        failures.append(f"{len(missing)} of {len(counted)} urgent messages never reached the handler")
    latencies = tuple(seen[m] for m in counted if m in seen)
    return Run(mode.label, round_no, latencies, drain_s, os.getloadavg()[0], tuple(failures))


def print_runs(runs: list[Run], modes: list[Mode], args: argparse.Namespace) -> None:
    """One line per run, then each mode's samples together."""
    print(
        f"pickup latency of single {URGENT} sends every {args.spacing_ms:g} ms while the worker "
        f"(concurrency {args.concurrency}) drains {args.bulk} {BULK} jobs of {args.bulk_sleep_ms:g} ms"
    )
    columns = ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "drain_s", "bulk/s", "load")
    width = max(20, *(len(m.label) for m in modes)) + 4
    header = f"{'mode':<{width}} " + " ".join(f"{c:>8}" for c in columns)
    print(header)
    print("-" * len(header))
    for r in runs:
        line = _line(f"{r.mode} #{r.round}", width, r.latencies_s, [r.drain_s], args.bulk)
        print(f"{line} {r.load:>8.1f}")
    print("-" * len(header))
    for m in modes:
        mine = [r for r in runs if r.mode == m.label]
        samples = tuple(x for r in mine for x in r.latencies_s)
        print(_line(f"{m.label} (all)", width, samples, [r.drain_s for r in mine], args.bulk))


def _line(label: str, width: int, samples: tuple[float, ...], drains: list[float | None], bulk: int) -> str:
    cuts = tp.percentiles_ms(samples, 50, 90, 99)
    done = [d for d in drains if d is not None]
    drain = statistics.fmean(done) if done else None
    cells = [f"{len(samples):>8}"]
    cells += [f"{c:>8.1f}" for c in cuts] if cuts else [f"{'-':>8}"] * 3
    cells += [f"{max(samples) * 1000:>8.1f}" if samples else f"{'-':>8}"]
    cells += [f"{drain:>8.2f}", f"{bulk / drain:>8.0f}"] if drain else [f"{'-':>8}"] * 2
    return f"{label:<{width}} " + " ".join(cells)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bulk", type=int, default=50_000, help="bulk backlog per run (default 50000)")
    parser.add_argument("--bulk-sleep-ms", type=float, default=0.0, help="each bulk job's sleep (default 0)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker --concurrency (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, interleaved (default 2)")
    parser.add_argument("--spacing-ms", type=float, default=20.0, help="between urgent sends (default 20)")
    parser.add_argument("--depth-every", type=int, default=10, help="urgent sends per backlog check")
    parser.add_argument("--max-s", type=float, default=1200.0, help="longest drain (default 1200 s)")
    parser.add_argument("--guard", type=float, default=None, help="also run priority with this share")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="server to use (default: $DATABASE_URL, else the embedded PostgreSQL)",
    )
    parser.add_argument(
        "--private", metavar="DIR", default=None, help="a private embedded PostgreSQL with its data under DIR"
    )
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="extra worker setting"
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.worker_env):
        parser.error("--worker-env takes NAME=VALUE")
    args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    if min(args.bulk, args.concurrency, args.rounds, args.depth_every) < 1 or args.spacing_ms <= 0:
        parser.error("--bulk, --concurrency, --rounds, --depth-every and --spacing-ms must be positive")
    if args.guard is not None and not 0 < args.guard <= 0.5:
        parser.error("--guard is a share above 0, at most 0.5")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run every mode --rounds times, interleaved; 1 when a run failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    modes = [Mode("priority", 10, 0.0), Mode("rotation", 0, 0.0)]
    if args.guard is not None:
        modes.append(Mode(f"priority + guard {args.guard:g}", 10, args.guard))
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        if args.private:
            server = stack.enter_context(tp.private_embedded_server(args.private))
        else:
            server = tp.choose_server(args.database_url)
        db_url = stack.enter_context(tp.fresh_database(server))
        tp.print_environment(db_url, server, f"{URGENT} + {BULK}", args.worker_env)
        for round_no in range(1, args.rounds + 1):
            order = modes if round_no % 2 else modes[::-1]  # alternate who goes first
            for mode in order:
                run = run_mode(db_url, mode, round_no, args)
                runs.append(run)
                print(f"  {mode.label} #{round_no}: {len(run.latencies_s)} samples", flush=True)
        print()
        print_runs(runs, modes, args)
    failures = [f"{r.mode} #{r.round}: {f}" for r in runs for f in r.failures]
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: worker stopped, database dropped", file=sys.stderr)
        sys.exit(130)
