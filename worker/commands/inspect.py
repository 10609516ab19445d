"""`pgmq-worker queues` and `pgmq-worker dlq list|replay|purge`: look at the queues and the dead letters."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import pgmq
from queues.depths import queue_depths
from queues.errors import UnknownQueue
from queues.names import dlq_name, validate_queue_name
from queues.retry import purge, replay
from worker.commands.edge import AGE, one_line_errors, settings_from_env, target_of


@click.command(name="queues")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queue.")
def list_queues(as_json: bool) -> None:
    """Each queue with its depth, in-flight count, oldest message age, dead-letter depth and pause."""
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        target = target_of(db_settings)
        features = prepare_schema(target)
        with connect(target) as conn:
            rows = queue_depths(conn, features)  # every queue in one statement, as the gauges read it
    if as_json:
        for r in rows:
            click.echo(
                json.dumps(
                    {
                        "queue": r.queue,
                        "depth": r.depth,
                        "visible": r.visible,
                        "in_flight": r.in_flight,
                        "oldest_age_s": r.oldest_age_s,
                        "dead": r.dead,
                        "paused": r.paused,
                    }
                )
            )
        return
    header = f"{'queue':<32} {'depth':>8} {'in_flight':>9} {'oldest_s':>9} {'dead':>6}  state"
    click.echo(header)
    for r in rows:
        oldest = "-" if r.oldest_age_s is None else str(r.oldest_age_s)
        state = "paused" if r.paused else "-"
        click.echo(f"{r.queue:<32} {r.depth:>8} {r.in_flight:>9} {oldest:>9} {r.dead:>6}  {state}")


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages."""


@dlq.command(name="list")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1), default=50)
def dlq_list(queue: str, limit: int) -> None:
    """Show the oldest dead letters of QUEUE, one JSON object per line."""
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        validate_queue_name(queue)
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            if not pgmq.queue_exists(conn, dlq_name(queue)):
                raise UnknownQueue(f"queue {queue!r} has no dead-letter queue")
            entries = pgmq.dead_letters(conn, queue, limit)
    for e in entries:
        click.echo(json.dumps({"dlq_msg_id": e.msg_id, **e.record}, default=str))


@dlq.command(name="replay")
@click.argument("queue")
@click.option(
    "--msg-id", "msg_ids", multiple=True, type=click.IntRange(1), help="Dead letter ids (repeatable)."
)
@click.option("--error-type", help="Only dead letters whose error has this type (e.g. TimeoutError).")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter of QUEUE (or of --error-type).")
def dlq_replay(queue: str, msg_ids: tuple[int, ...], error_type: str | None, replay_all: bool) -> None:
    """Send dead letters back to QUEUE: a dead job runs again under its own id, attempts reset."""
    if not msg_ids and not replay_all and error_type is None:
        raise click.UsageError("name dead letters with --msg-id, pick them with --error-type, or pass --all")
    if msg_ids and replay_all:
        raise click.UsageError("--msg-id and --all exclude each other")
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        validate_queue_name(queue)
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            replayed = replay(conn, queue, msg_ids or None, error_type=error_type)
    click.echo(
        json.dumps(
            {
                "queue": queue,
                "replayed": len(replayed),
                "msg_ids": [r.msg_id for r in replayed],
                "job_ids": [str(r.job_id) for r in replayed if r.job_id is not None],
            }
        )
    )


@dlq.command(name="purge")
@click.argument("queue")
@click.option("--older-than", type=AGE, help="Only dead letters parked longer than this (7d, 12h, 30m).")
def dlq_purge(queue: str, older_than: timedelta | None) -> None:
    """Delete the dead letters of QUEUE (all, or those older than --older-than)."""
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        validate_queue_name(queue)
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            purged = purge(conn, queue, older_than)
    click.echo(json.dumps({"queue": queue, "purged": purged}))
