"""`pgmq-worker workers` and `pgmq-worker stats`: who is working, and how the queues are doing."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from db import durations
from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import pgmq
from queues.errors import UnknownQueue
from queues.names import validate_queue_name
from queues.stats import QueueStats, queue_stats
from queues.workers import WorkerRow, list_workers
from worker.commands.edge import one_line_errors, settings_from_env, target_of


@click.command(name="workers")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per worker.")
def list_workers_command(as_json: bool) -> None:
    """Each registered worker: status (running, draining or stale), queues, in flight, last heartbeat.

    A worker is `stale` when its last heartbeat is older than three of its heartbeat intervals
    (killed, or cut off from the database); rows of workers gone for an hour are removed.
    """
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            rows = list_workers(conn)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json()))
        return
    click.echo(
        f"{'id':<40} {'status':<8} {'in_flight':>11} {'processed':>9} {'failed':>7} {'seen_s':>7}  queues"
    )
    for row in rows:
        click.echo(_worker_line(row))


def _worker_line(row: WorkerRow) -> str:
    where = f" ({row.machine_id}, {row.region})" if row.machine_id else ""
    flight = f"{row.in_flight}/{row.concurrency}"
    return (
        f"{row.id:<40} {row.status:<8} {flight:>11} {row.processed:>9} {row.failed:>7} "
        f"{row.last_seen_s:>7.1f}  {','.join(row.queues)}{where}"
    )


def _since(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """--since as a positive duration (db.durations, the one normaliser), or a usage error."""
    try:
        return durations.positive(durations.parse(value, "--since"), "--since")
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.option("--queue", help="Only this queue.")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    callback=_since,
    help="The window: 90s, 15m, 1h, 2d, 1h30m, PT1H...",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queue.")
def stats(queue: str | None, since: timedelta, as_json: bool) -> None:
    """Per queue over the window: succeeded, failed (retry scheduled), dead, success rate, duration and
    wait percentiles, stuck jobs (lease passed without a renewal) and failed job webhooks."""
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        if queue is not None:
            validate_queue_name(queue)
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            rows = queue_stats(conn, queue=queue, since=since)
            if queue is not None and not pgmq.queue_exists(conn, queue) and not any(map(_active, rows)):
                raise UnknownQueue(f"no queue named {queue!r} and no job rows for it in the window")
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json()))
        return
    click.echo(
        f"{'queue':<32} {'ok':>7} {'failed':>7} {'dead':>6} {'rate':>6} {'p50_ms':>9} {'p95_ms':>9} "
        f"{'p99_ms':>9} {'wait50':>9} {'wait95':>9} {'stuck':>5} {'hooks!':>6}"
    )
    for row in rows:
        click.echo(_stats_line(row))


def _active(row: QueueStats) -> bool:
    return bool(row.succeeded or row.failed or row.dead or row.cancelled or row.stuck or row.webhook_failures)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _stats_line(row: QueueStats) -> str:
    rate = "-" if row.success_rate is None else f"{row.success_rate:.0%}"
    return (
        f"{row.queue:<32} {row.succeeded:>7} {row.failed:>7} {row.dead:>6} {rate:>6} "
        f"{_num(row.duration_p50_ms):>9} {_num(row.duration_p95_ms):>9} {_num(row.duration_p99_ms):>9} "
        f"{_num(row.wait_p50_ms):>9} {_num(row.wait_p95_ms):>9} {row.stuck:>5} {row.webhook_failures:>6}"
    )
