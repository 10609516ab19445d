"""`pgmq-worker cancel JOB_ID...`: cancel jobs as `POST /jobs/{id}/cancel` does, one line per id."""

from __future__ import annotations

import json
from typing import Any

import click

from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues.cancel import JobFinished, UnknownJob, cancel
from queues.jobs import parse_job_id
from worker.commands.edge import one_line_errors, settings_from_env, target_of

SAYS = {
    "cancelled": "cancelled (it had not started)",
    "requested": "cancel requested: running, its worker stops it",
    "finished": "already finished: {status}",
    "unknown": "no such job",
    "invalid": "not a job id",
}


@click.command(name="cancel")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per id.")
def cancel_jobs(job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs: not started ones end `cancelled` now, running ones are stopped by their worker.

    Exits 1 when any JOB_ID is not a job id or names no job (every id is still tried).
    """
    db_settings = settings_from_env(DatabaseSettings)
    outcomes: list[dict[str, Any]] = []
    with one_line_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            for raw in job_ids:
                outcomes.append(_cancel_one(conn, raw))
                _say(outcomes[-1], as_json=as_json)
    bad = sum(o["result"] in {"unknown", "invalid"} for o in outcomes)
    if bad:
        raise click.ClickException(f"{bad} of {len(outcomes)} JOB_IDs named no job")


def _cancel_one(conn: Any, raw: str) -> dict[str, Any]:
    job_id = parse_job_id(raw)
    said: dict[str, Any] = {"job_id": raw, "result": "invalid", "status": None, "children": 0}
    if job_id is None:
        return said
    try:
        done = cancel(conn, job_id)
    except UnknownJob:
        return said | {"result": "unknown"}
    except JobFinished as exc:
        return said | {"result": "finished", "status": exc.status}
    return said | {"result": done.action, "status": done.job.status, "children": done.children}


def _say(outcome: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(outcome))
        return
    text = SAYS[outcome["result"]].format(status=outcome["status"])
    if outcome["children"]:
        text += f" (and {outcome['children']} unfinished children)"
    click.echo(f"{outcome['job_id']}: {text}", err=outcome["result"] in {"unknown", "invalid"})
