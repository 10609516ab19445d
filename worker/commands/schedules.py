"""`pgmq-worker schedules`: each declared schedule, the last tick a worker sent and the next one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from worker.commands.edge import imports_option, load_registry, one_line_errors, settings_from_env, target_of
from worker.schedules import Schedule
from worker.store import ticks


@click.command(name="schedules")
@imports_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule.")
def list_schedules(imports: tuple[str, ...], as_json: bool) -> None:
    """Each schedule the handler modules declare: queue, cron, timezone, last tick run, next tick."""
    registry = load_registry(imports)
    declared = registry.schedules()
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            last = ticks.last_ticks(conn, [s.name for s in declared])
    now = datetime.now(UTC)
    rows = [_row(s, last.get(s.name), now) for s in declared]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no schedules declared (pass --import with the module that declares them)", err=True)
        return
    click.echo(f"{'name':<28} {'queue':<20} {'cron':<18} {'timezone':<16} {'last tick':<26} next tick")
    for r in rows:
        click.echo(
            f"{r['name']:<28} {r['queue']:<20} {r['cron']:<18} {r['timezone']:<16} "
            f"{r['last_tick'] or '-':<26} {r['next_tick']}"
        )


def _row(declared: Schedule, last: datetime | None, now: datetime) -> dict[str, Any]:
    return {
        **declared.describe(),
        "last_tick": None if last is None else last.astimezone(declared.zone).isoformat(),
        "next_tick": declared.next_tick(now).isoformat(),
    }
