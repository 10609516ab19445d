"""The benchmark suite: one command, one run, one table against the raw pgmq ceiling and the peers.

    python bench/suite.py                       # a private embedded PostgreSQL, N = 50,000
    python bench/suite.py --quick --skip-peers  # a few minutes, smaller N
    python bench/suite.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

Without --dsn it starts a PostgreSQL of its own (the embedded wheel, in a temporary folder,
stopped and deleted at the end); with --dsn it uses that server. Either way every part runs on
fresh databases made for this run and dropped afterwards. In one run it measures:

1. the raw pgmq ceiling with pgbench (bench/ceiling.py): read(q, 30, 1) + delete, and
   read(q, 30, 100) + delete(q, ids[]), at 1 and 2 clients;
2. `pgmq-worker run --burst` draining N no-op jobs (sent with one send_batch), with 1 and
   2 processes, with job rows on and off (`@handler(..., job_rows=False)`), and with job rows
   at twice the default concurrency (bench/throughput.py),
   as a ratio to the batched ceiling at as many clients; beside it a bare Python loop of
   read(q, 30, 100) + delete(q, ids) (bench/raw_loops.py), 1 and 2 processes, for what a second
   process can gain on this machine, and the floor: the worker's own read and ack statements in
   a bare loop, job rows off and on, with the server's CPU per message (bench/statement_floor.py);
3. pickup latency of an idle worker, single messages 20 ms apart, LISTEN/NOTIFY and polling
   only (bench/throughput.py --pickup-latency); beside it bare loops on pgmq's own wake-ups:
   enable_notify_insert with throttle 0 and its default 250 ms, and read_with_poll (100 ms);
4. enqueue rates of our API, single and batch, and POST /jobs, at 1 and 8 producers, as ratios
   to raw pgmq.send / send_batch at as many clients (bench/enqueue.py);
5. the worker's RSS (VmRSS, sampled while it runs) after its first 10,000 jobs and after
   draining 200,000 (--quick: 50,000);

then the peers (bench/peer_runs.py: PgQueuer, Procrastinate, Chancy; --skip-peers to leave them
out), each draining the same N in its own venv and database, after enqueueing them in bulk its
own way (timed too: a row per peer, beside `enqueue_batch`). The table is printed as markdown
and appended to bench/RESULTS.md with the date, machine, PostgreSQL version and the command.

Drain rates (ours and the peers') run from the first handler start to the queue drained, so
interpreter start-up is left out on both sides; our spawn-to-exit rates are in the notes.
Timings on a shared machine are noisy: compare rows of one run, and run twice before believing
a difference. Exit status 1 when a part failed (its row says why); the figures never fail.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as in bench/enqueue.py

from bench import ceiling, enqueue, peer_runs, raw_loops, statement_floor, throughput
from bench.throughput import SERVER_VERSION, Server, fresh_database, percentiles_ms
from db.pgmq_install import detect
from worker.settings import WorkerSettings

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_TITLE = "# Benchmark results\n\nAppended by `python bench/suite.py`, newest last.\n"
RSS_FIRST = 10_000
LATENCY_SPACING_S = 0.020
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each part is: the defaults, or --quick's smaller run."""

    messages: int
    rss_messages: int
    pgbench_s: int
    latency_samples: int
    enqueue_sizes: enqueue.Sizes
    peer_timeout_s: float


FULL = Plan(50_000, 200_000, 10, 200, enqueue.Sizes(), 900.0)
QUICK = Plan(10_000, 50_000, 5, 100, enqueue.Sizes(2_000, 1_000, 50_000, 1_000, (1, 8)), 300.0)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; `note` stands in for the figures of a part that did not run."""

    what: str
    rate: float | None = None
    ratio: float | None = None
    ratio_to: str = ""
    latency_ms: list[float] | None = None  # p50, p95, p99
    note: str | None = None


@dataclass
class Report:
    """What the run found: rows, notes under the table, failures."""

    rows: list[Row]
    notes: list[str]
    failures: list[str]

    def part(self, name: str, measure: Callable[[], T]) -> T | None:
        """Run one part; an exception becomes a "not run" row and a failure, not the end of the run."""
        progress(f"{name} ...")
        started = time.monotonic()
        try:
            result = measure()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {_one_line(str(exc))}"
            self.rows.append(Row(name, note=f"not run: {reason}"))
            self.failures.append(f"{name}: {reason}")
            return None
        progress(f"{name}: done in {time.monotonic() - started:.0f} s")
        return result


def progress(message: str) -> None:
    """A progress line on stderr; stdout gets the table."""
    print(f"suite: {message}", file=sys.stderr, flush=True)


# -- the parts ------------------------------------------------------------------------------------


def ceiling_rows(report: Report, db_url: str, plan: Plan) -> dict[int, float]:
    """Part 1; returns the batched ceiling's msgs/s by client count, the base of the drain ratios."""
    measured = report.part("raw pgmq ceiling (pgbench)", lambda: ceiling.measure(db_url, plan.pgbench_s))
    if measured is None:
        return {}
    version_line, runs = measured
    report.notes.append(f"pgbench: {version_line}, {plan.pgbench_s} s a run, simple protocol")
    batched = {r.clients: r.rate for r in runs if r.qty == 100 and not r.failures}
    for r in runs:
        what = (
            f"raw pgmq ceiling: pgbench `read(q,30,100)` + `delete(q, ids)`, {_clients(r.clients)}"
            if r.qty == 100
            else f"raw pgmq: pgbench `read(q,30,1)` + `delete(q, id)`, {_clients(r.clients)}"
        )
        base = batched.get(r.clients) if r.qty == 1 else None
        report.rows.append(
            Row(
                what,
                r.rate,
                r.rate / base if base else None,
                "batched ceiling, same clients" if base else "",
                note=_failed(r.failures),
            )
        )
        report.failures += [f"ceiling qty={r.qty} clients={r.clients}: {f}" for f in r.failures]
    return batched


DRAIN_KINDS = (("on", "async"), ("off", "async-no-job-rows"))  # job rows -> bench/throughput.py queue kind


def drain_rows(report: Report, db_url: str, plan: Plan, batched: dict[int, float]) -> dict[str, float]:
    """Part 2; returns our one-process drain rate by job rows "on" / "off"."""
    default = _default_concurrency()
    one_process: dict[str, float] = {}
    rates: dict[tuple[str, int], float] = {}  # (job rows on / off / bare, processes) -> jobs/s
    # Each kind at 1 and 2 processes with the default concurrency, and job rows on at twice it
    # (reads of as many as the default's slots: what raising --concurrency gives quick handlers).
    runs = [(rows, kind, n, default) for (rows, kind), n in itertools.product(DRAIN_KINDS, (1, 2))]
    runs.append((*DRAIN_KINDS[0], 1, 2 * default))
    for rows, kind, processes, concurrency in runs:
        queue = throughput.QUEUES[kind]
        name = f"pgmq-worker drain, {processes} process{'es' if processes > 1 else ''}, job rows {rows}"
        name += f", concurrency {concurrency}" if concurrency != default else ""
        run = report.part(
            name,
            partial(
                throughput.throughput_run,
                db_url,
                queue,
                plan.messages,
                concurrency,
                settings={},
                notify_trigger="none",
                processes=processes,
            ),
        )
        if run is None:
            continue
        rate = plan.messages / run.work_s if run.work_s else None
        if rate and concurrency == default:
            rates[(rows, processes)] = rate
            if processes == 1:
                one_process[rows] = rate
        flags = f" --processes {processes}" if processes > 1 else ""
        flags += f" --concurrency {concurrency}" if concurrency != default else ""
        what = (
            f"**pgmq-worker** `run --burst{flags}`, "
            f"concurrency {concurrency}, job rows {rows}: N = {plan.messages:,} no-op jobs"
        )
        report.rows.append(_drain_row(what, rate, batched, processes, run.failures))
        report.notes.append(
            f"{name}: spawn -> exit {run.wall_s:.2f} s ({plan.messages / run.wall_s:,.0f} jobs/s with "
            f"start-up), start-up {_s(run.startup_s)}, worker CPU {run.cpu_s:.2f} s, "
            f"{_per_message(run)} committed transactions a job"
        )
        report.failures += [f"{name}: {f}" for f in run.failures]
    rates |= bare_drain_rows(report, db_url, plan, batched)
    floor_rows(report, db_url, plan, batched)
    for rows, label in (
        ("on", "pgmq-worker, job rows on"),
        ("off", "pgmq-worker, job rows off"),
        ("bare", "bare loop"),
    ):
        if rates.get((rows, 1)) and rates.get((rows, 2)):
            report.notes.append(
                f"2 processes / 1 process, {label}: {rates[(rows, 2)] / rates[(rows, 1)]:.2f}"
            )
    if batched.get(1) and batched.get(2):
        report.notes.append(f"2 clients / 1 client, pgbench batched ceiling: {batched[2] / batched[1]:.2f}")
    return one_process


def _drain_row(
    what: str, rate: float | None, batched: dict[int, float], processes: int, failures: tuple[str, ...]
) -> Row:
    """A drain's row: its rate and its ratio to the batched ceiling at as many clients."""
    base = batched.get(processes)
    return Row(
        what,
        rate,
        rate / base if rate and base else None,
        f"batched ceiling, {_clients(processes)}",
        note=_failed(failures),
    )


def floor_rows(report: Report, db_url: str, plan: Plan, batched: dict[int, float]) -> None:
    """Part 2, the floor: the worker's own read and ack in a bare loop (bench/statement_floor.py)."""
    measured = report.part("statement floor", lambda: statement_floor.measure(db_url, plan.messages))
    if measured is None:
        return
    for r in measured:
        what = f"floor: {r.what}, alone (bench/statement_floor.py), 1 connection: N = {r.messages:,}"
        report.rows.append(_drain_row(what, r.rate, batched, 1, ()))
    cpu = "; ".join(
        f"{r.what}: {statement_floor.us(r.per_message_us(r.server_cpu_s))} server, "
        f"{statement_floor.us(r.per_message_us(r.client_cpu_s))} client"
        for r in measured
    )
    report.notes.append(f"floor, CPU µs a message: {cpu}")


def bare_drain_rows(
    report: Report, db_url: str, plan: Plan, batched: dict[int, float]
) -> dict[tuple[str, int], float]:
    """Part 2, the reference: bench/raw_loops.py's bare read(100) + delete loop, 1 and 2 processes."""
    rates: dict[tuple[str, int], float] = {}
    for processes in (1, 2):
        name = f"bare loop drain, {processes} process{'es' if processes > 1 else ''}"
        run = report.part(
            name,
            partial(
                throughput.throughput_run,
                db_url,
                throughput.RAW_QUEUE,
                plan.messages,
                raw_loops.READ_BATCH,
                settings={},
                notify_trigger="none",
                processes=processes,
                command=raw_loops.drain_command(throughput.RAW_QUEUE, processes),
            ),
        )
        if run is None:
            continue
        rate = plan.messages / run.work_s if run.work_s else None
        if rate:
            rates[("bare", processes)] = rate
        what = (
            f"raw pgmq: bare Python loop `read(q,30,100)` + `delete(q, ids)` (psycopg, bench/raw_loops.py), "
            f"{processes} process{'es' if processes > 1 else ''}: N = {plan.messages:,}"
        )
        report.rows.append(_drain_row(what, rate, batched, processes, run.failures))
        report.failures += [f"{name}: {f}" for f in run.failures]
    return rates


def latency_rows(report: Report, db_url: str, plan: Plan) -> None:
    """Part 3: pickup latency with each wake-up mode; then the bare loops on pgmq's own wake-ups."""
    worker_queue, raw_queue = throughput.QUEUES["async"], throughput.RAW_QUEUE
    cases: list[tuple[str, str, str, dict[str, str], list[str] | None, str | None]] = [
        (
            label,
            "**pgmq-worker** pickup (enqueue -> handler start), idle worker",
            worker_queue,
            settings,
            None,
            None,
        )
        for label, settings in throughput.LATENCY_MODES
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        notify_insert = detect(conn).notify_insert  # enable_notify_insert(queue, throttle_ms): not in 1.5.1
    cases += [
        (
            label,
            "raw pgmq pickup (enqueue -> read returns), bare Python loop",
            raw_queue,
            {},
            raw_loops.pickup_command(raw_queue, mode),
            None
            if notify_insert or not mode.startswith("notify:")
            else "this pgmq has no enable_notify_insert",
        )
        for label, mode in throughput.RAW_LATENCY_MODES
    ]
    for label, prefix, queue, settings, command, unavailable in cases:
        name = f"pickup latency, {label}"
        if unavailable is not None:  # not a failure: the server's pgmq lacks what the mode uses
            report.rows.append(Row(f"{prefix}, {label}", note=f"not run: {unavailable}"))
            continue
        run = report.part(
            name,
            partial(
                throughput.latency_run,
                db_url,
                queue,
                label,
                settings,
                samples=plan.latency_samples,
                spacing_s=LATENCY_SPACING_S,
                command=command,
            ),
        )
        if run is None:
            continue
        what = f"{prefix}, {label}, {run.sent} single sends {LATENCY_SPACING_S * 1000:g} ms apart"
        cuts = percentiles_ms(run.latencies_s, 50, 95, 99)
        report.rows.append(Row(what, latency_ms=cuts, note=_failed(run.failures)))
        report.failures += [f"{name}: {f}" for f in run.failures]


def enqueue_rows(report: Report, db_url: str, plan: Plan) -> float | None:
    """Part 4: enqueue rates as ratios to raw pgmq at the same client count; enqueue_batch's rate."""
    sizes = plan.enqueue_sizes
    runs = report.part("enqueue throughput", lambda: enqueue.measure(db_url, sizes))
    if runs is None:
        return None
    raw = {(r.kind, r.clients): r.rate for r in runs if r.kind in ("send", "send_batch")}
    order = {kind: i for i, kind in enumerate(enqueue.LABELS)}
    for r in sorted(runs, key=lambda r: (r.kind.endswith("_batch"), r.clients, order[r.kind])):
        baseline = enqueue.BASELINE[r.kind]
        base = raw.get((baseline, r.clients)) if baseline != r.kind else None
        label = enqueue.LABELS[r.kind].format(batch=sizes.batch_size)
        what = f"enqueue: {label}, {_producers(r.clients)}; latency per call"
        report.rows.append(
            Row(
                what,
                r.rate,
                r.rate / base if base else None,
                f"raw `pgmq.{baseline}`, same clients" if base else "",
                latency_ms=percentiles_ms(r.latencies_s, 50, 95, 99),
                note=_failed(r.failures),
            )
        )
        report.failures += [f"enqueue {r.kind} clients={r.clients}: {f}" for f in r.failures]
    plain = {r.clients: r.rate for r in runs if r.kind == "send_plain"}
    for r in runs:
        if r.kind == "enqueue" and plain.get(r.clients):
            report.notes.append(
                f"`enqueue` at {_producers(r.clients)} / raw `pgmq.send` into a queue without the "
                f"insert-notify trigger: {r.rate / plain[r.clients]:.2f}"
            )
    return next((r.rate for r in runs if r.kind == "enqueue_batch" and not r.failures), None)


def rss_rows(report: Report, db_url: str, plan: Plan) -> None:
    """Part 5: the worker's RSS after its first 10,000 jobs and after all of them."""
    queue = throughput.QUEUES["async"]
    name = f"worker RSS over {plan.rss_messages:,} jobs"
    run = report.part(
        name, lambda: throughput.rss_run(db_url, queue, plan.rss_messages, _default_concurrency())
    )
    if run is None:
        return
    first, last = run.rss_after(RSS_FIRST), run.last
    if first is None or last is None:
        report.rows.append(Row(name, note=f"not measured: {len(run.samples)} samples"))
        report.failures.append(f"{name}: too few RSS samples")
    else:
        what = (
            f"**pgmq-worker** RSS (VmRSS) after {first.handled:,} jobs: {first.rss_kb / 1024:.1f} MB; "
            f"after {last.handled:,}: {last.rss_kb / 1024:.1f} MB "
            f"(**{(last.rss_kb - first.rss_kb) / 1024:+.1f} MB**); jobs/s spawn -> exit"
        )
        report.rows.append(Row(what, run.messages / run.wall_s, note=_failed(run.failures)))
        report.notes.append(
            f"RSS: {len(run.samples)} samples every 0.25 s; 'after K jobs' = the first sample once K "
            "messages had left the queue, the last = the last sample before the worker exited"
        )
    report.failures += [f"{name}: {f}" for f in run.failures]


def peer_rows(
    report: Report,
    server: Server,
    plan: Plan,
    batched: dict[int, float],
    ours: dict[str, float],
    *,
    our_batch: float | None,
) -> None:
    """The peers, each on its own fresh database; one not run is a row saying why.

    Each also enqueued its jobs in bulk, its own way, before draining them: a row of its own, and
    `enqueue_batch` (part 4) as a ratio to it.
    """
    results = report.part(
        "peers",
        lambda: peer_runs.run_peers(server, plan.messages, plan.peer_timeout_s, progress),
    )
    if results is None:
        return
    base = batched.get(1)
    for result in results:
        rate = result.rate
        what = f"{result.label}: N = {plan.messages:,} no-op jobs"
        if result.not_run:
            report.rows.append(Row(what, note=f"not run: {_one_line(result.not_run)}"))
            continue
        report.rows.append(
            Row(what, rate, rate / base if rate and base else None, "batched ceiling, 1 client")
        )
        for rows, our_rate in ours.items():
            if rate:
                report.notes.append(
                    f"pgmq-worker 1 process, job rows {rows} / {result.peer.name}: {our_rate / rate:.2f}"
                )
        bulk = result.enqueue_rate
        if bulk:
            batch = f"`enqueue_batch`, {plan.enqueue_sizes.batch_size:,} a call"
            report.rows.append(
                Row(
                    f"{result.label}: bulk enqueue of the N jobs ({result.peer.bulk})",
                    bulk,
                    bulk / our_batch if our_batch else None,
                    batch if our_batch else "",
                )
            )
            if our_batch:
                report.notes.append(
                    f"{batch} (job rows on) / {result.peer.name} bulk enqueue: {our_batch / bulk:.2f}"
                )
        report.failures += list(result.failures)


# -- the table and the record ---------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    """The markdown table."""
    lines = [
        "| what | jobs/s (msgs/s) | ratio | ratio to | latency p50 / p95 / p99 ms |",
        "|---|--:|--:|---|--:|",
    ]
    for r in rows:
        if r.note and r.rate is None:
            lines.append(f"| {r.what} | {r.note} | — | | — |")
            continue
        rate = f"{r.rate:,.0f}" if r.rate is not None else "—"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        latency = " / ".join(f"{x:.1f}" for x in r.latency_ms) if r.latency_ms else "—"
        what = f"{r.what} ({r.note})" if r.note else r.what
        lines.append(f"| {what} | {rate} | {ratio} | {r.ratio_to} | {latency} |")
    return "\n".join(lines)


def machine() -> str:
    """Cores and CPU model."""
    model = "unknown CPU"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores ({model}), {platform.system()} {platform.release()}, load average at start {load}"


def server_facts(db_url: str, server: Server) -> str:
    """PostgreSQL and pgmq versions, and where the server came from."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(SERVER_VERSION).fetchone()
        features = detect(conn)
    return (
        f"PostgreSQL {row[0] if row else '?'} ({server.label}); pgmq {features.version} ({features.source})"
    )


def command_line(argv: list[str]) -> str:
    """The command as typed, any password in a URL masked."""
    masked = [re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", a) for a in argv]
    return shlex.join(["python", "bench/suite.py", *masked])


def record(text: str, path: Path) -> None:
    """Append one run's section to RESULTS.md (created with its title when missing)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else RESULTS_TITLE
    path.write_text(existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n", encoding="utf-8")


def section(started_at: datetime, elapsed_s: float, facts: list[str], report: Report) -> str:
    """One run's record: heading, facts, table, notes, failures."""
    lines = [f"## {started_at:%Y-%m-%d %H:%M} UTC", ""]
    lines += [f"- {fact}" for fact in facts]
    lines += [f"- run took {elapsed_s / 60:.1f} min", "", render(report.rows), ""]
    if report.notes:
        lines += ["Notes (all from this run):", "", *[f"- {n}" for n in report.notes], ""]
    if report.failures:
        lines += ["Failures:", "", *[f"- {_one_line(f)}" for f in report.failures], ""]
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="server to use (default: a private embedded PostgreSQL)")
    parser.add_argument("--messages", type=int, help="N, jobs per drain (default 50000; --quick 10000)")
    parser.add_argument(
        "--rss-messages", type=int, help="jobs drained for the RSS part (default 200000; --quick 50000)"
    )
    parser.add_argument("--skip-peers", action="store_true", help="leave out PgQueuer, Procrastinate, Chancy")
    parser.add_argument("--quick", action="store_true", help="smaller N and shorter runs (a few minutes)")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where to append (default bench/RESULTS.md)"
    )
    args = parser.parse_args(argv)
    if (args.messages is not None and args.messages < 1) or (
        args.rss_messages is not None and args.rss_messages <= RSS_FIRST
    ):
        parser.error(f"--messages must be >= 1 and --rss-messages > {RSS_FIRST}")
    return args


def plan_for(args: argparse.Namespace) -> Plan:
    """The defaults or --quick's, with --messages / --rss-messages applied."""
    plan = QUICK if args.quick else FULL
    return Plan(
        args.messages or plan.messages,
        args.rss_messages or plan.rss_messages,
        plan.pgbench_s,
        plan.latency_samples,
        plan.enqueue_sizes,
        plan.peer_timeout_s,
    )


@contextmanager
def server_for(dsn: str | None) -> Iterator[Server]:
    """--dsn's server, else a private embedded one for this run only."""
    if dsn:
        yield Server(dsn, "--dsn")
        return
    with throughput.private_embedded_server() as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    """Run every part, print the table, append it to RESULTS.md; 1 when a part failed."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = plan_for(args)
    # SIGTERM unwinds like Ctrl-C: workers killed, databases dropped, the private server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started_at, started = datetime.now(UTC), time.monotonic()
    facts = [f"machine: {machine()}"]
    report = Report([], [], [])
    with server_for(args.dsn) as server:
        with fresh_database(server) as db_url:
            facts.append(server_facts(db_url, server))
            batched = ceiling_rows(report, db_url, plan)
            ours = drain_rows(report, db_url, plan, batched)
            latency_rows(report, db_url, plan)
            our_batch = enqueue_rows(report, db_url, plan)
            rss_rows(report, db_url, plan)
        if args.skip_peers:
            report.rows.append(Row("peers (PgQueuer, Procrastinate, Chancy)", note="not run: --skip-peers"))
        else:
            peer_rows(report, server, plan, batched, ours, our_batch=our_batch)
    facts += [
        f"python {platform.python_version()}; worker log level warning; N = {plan.messages:,}"
        + (" (--quick)" if args.quick else ""),
        f"command: `{command_line(argv)}`",
    ]
    text = section(started_at, time.monotonic() - started, facts, report)
    print()
    print(text)
    record(text, args.results)
    progress(f"appended to {args.results}")
    return 1 if report.failures else 0


def _default_concurrency() -> int:
    default = WorkerSettings.model_fields["concurrency"].default
    return int(default)


def _clients(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


def _producers(n: int) -> str:
    return f"{n} producer{'s' if n > 1 else ''}"


def _failed(failures: tuple[str, ...]) -> str | None:
    return f"FAILED: {_one_line(failures[0])}" if failures else None


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.replace("|", "/")[:160]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _per_message(run: throughput.ThroughputRow) -> str:
    return f"{run.db.commits / run.messages:.2f}" if run.db else "-"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: workers stopped, databases dropped, private server stopped", file=sys.stderr)
        sys.exit(130)
