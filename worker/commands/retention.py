"""`pgmq-worker retry JOB_ID...` and `pgmq-worker prune`: send dead jobs again, delete old finished rows."""

from __future__ import annotations

import json
from datetime import timedelta
from uuid import UUID

import click

from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues.names import validate_queue_name
from queues.retention import prune as prune_rows
from queues.retry import retry as retry_job
from worker.commands.edge import AGE, error_line, one_line_errors, settings_from_env, target_of
from worker.settings import WorkerSettings


@click.command()
@click.argument("job_ids", nargs=-1, required=True, type=click.UUID, metavar="JOB_ID...")
def retry(job_ids: tuple[UUID, ...]) -> None:
    """Send dead jobs again under their own ids (attempts and error reset, history kept).

    One JSON line per job; exit status 1 when any was not retried (unknown, not dead, or its
    dead letter purged).
    """
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            results = [retry_job(conn, job_id) for job_id in dict.fromkeys(job_ids)]
    for r in results:
        click.echo(
            json.dumps(
                {"job_id": str(r.job_id), "outcome": r.outcome, "status": r.status, "msg_id": r.msg_id}
            )
        )
    refused = [r for r in results if not r.retried]
    if refused:
        raise error_line(f"{len(refused)} of {len(results)} not retried: {refused[0].reason()}")


@click.command()
@click.option(
    "--older-than",
    type=AGE,
    help="Delete what finished longer ago than this (7d, 12h, 30m); default PGMQ_WORKER_RETENTION.",
)
@click.option("--queue", help="Only this queue (default: every queue).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queue.")
def prune(older_than: timedelta | None, queue: str | None, as_json: bool) -> None:
    """Delete finished jobs (succeeded, dead, cancelled; with their steps and artifacts) and archived
    messages older than the age, in small batches; prints what went, per queue."""
    settings = settings_from_env(WorkerSettings)
    db_settings = settings_from_env(DatabaseSettings)
    age = settings.retention if older_than is None else older_than
    if age <= timedelta(0):
        what = "--older-than" if older_than is not None else "PGMQ_WORKER_RETENTION is 0 (keep everything):"
        raise click.UsageError(f"{what} must be longer than 0 (pass --older-than 1s to delete all finished)")
    with one_line_errors():
        if queue is not None:
            validate_queue_name(queue)
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            pruned = prune_rows(conn, age, queue, settings.retention_batch)
    if as_json:
        for p in pruned:
            click.echo(json.dumps(p.as_json()))
        return
    click.echo(f"{'queue':<32} {'jobs':>10} {'archived':>10}")
    for p in pruned:
        click.echo(f"{p.queue:<32} {p.jobs:>10} {p.archived:>10}")
    click.echo(f"{'total':<32} {sum(p.jobs for p in pruned):>10} {sum(p.archived for p in pruned):>10}")
