"""`python -m web` (what `pgmq-worker web` runs): serve the web app with uvicorn."""

from __future__ import annotations

import os
import signal
import sys

import click
import psycopg
import uvicorn
from pydantic import ValidationError

from db.connect import resolve
from db.embedded import pgdata_path
from db.errors import DatabaseError
from db.logs import configure_logging
from db.redact import environment_secrets, redact
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues.catalog import import_modules
from queues.contract import describe_validation_error
from queues.errors import QueueError
from web.app import create_app
from web.settings import WebSettings

GRACEFUL_SHUTDOWN_S = 5  # open SSE streams are cut after this; browsers' EventSource reconnects


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind.")
@click.option("--import", "imports", multiple=True, metavar="MODULE", help="Handler module (repeatable).")
def main(host: str, port: int, imports: tuple[str, ...]) -> None:
    """Serve POST /jobs/{queue}, GET /jobs/{id}, its SSE stream, /healthz and the / page."""
    try:
        settings = WebSettings()
        db_settings = DatabaseSettings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid setting: {describe_validation_error(exc)}") from exc
    secrets = environment_secrets(os.environ)
    configure_logging(secrets=secrets)
    try:
        import_modules(imports)
        target = resolve(db_settings)
        prepare_schema(target)
    except (QueueError, DatabaseError) as exc:
        raise click.ClickException(redact(str(exc), secrets)) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(redact(f"database error: {exc}".strip().splitlines()[0], secrets)) from exc
    if target.embedded:
        click.echo(f"Using the embedded PostgreSQL in {pgdata_path(db_settings.data_dir)}", err=True)
    if settings.jwt_secret is None:
        click.echo("No JWT secret set: the job endpoints are open to anyone who can reach them.", err=True)
    app = create_app(target, settings=settings, db_settings=db_settings)
    # uvicorn re-raises the stop signal after its graceful shutdown; with this handler in place the
    # re-raised signal is a no-op, so a clean stop exits 0 (Fly and `dev` read the exit status).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, log_level="info")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
