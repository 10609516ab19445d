"""`pgmq-worker migrate` and `stop-embedded`: the database itself."""

from __future__ import annotations

import click

from db.connect import connect
from db.embedded import pgdata_path, stop_embedded
from db.migrate import migrate as apply_migrations
from db.migrate import status as migration_status
from db.pgmq_install import ensure_installed
from db.settings import DatabaseSettings
from worker.commands.edge import one_line_errors, settings_from_env, target_of


@click.command()
@click.option("--status", "show_status", is_flag=True, help="List migrations and whether each is applied.")
def migrate(show_status: bool) -> None:
    """Install pgmq where it is missing, then apply pending migrations (idempotent)."""
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors():
        target = target_of(db_settings)
        with connect(target) as conn:
            if show_status:
                for m in migration_status(conn):
                    when = m.applied_at.isoformat(timespec="seconds") if m.applied_at else "pending"
                    click.echo(f"{m.version:04d}_{m.name}  {when}")
                return
            features = ensure_installed(conn)
            click.echo(f"pgmq {features.version} ({features.source}) on {target.describe()}")
            done = apply_migrations(conn)
        for applied in done:
            click.echo(f"applied {applied.version:04d}_{applied.name}")
        if not done:
            click.echo("migrations: up to date")


@click.command(name="stop-embedded")
def stop_embedded_server() -> None:
    """Stop the embedded PostgreSQL (it otherwise keeps running between commands)."""
    db_settings = settings_from_env(DatabaseSettings)
    stopped = stop_embedded(db_settings.data_dir)
    click.echo("stopped" if stopped else f"not running ({pgdata_path(db_settings.data_dir)})")
