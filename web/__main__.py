"""`python -m web` (what `pgmq-worker web` runs): serve the web app with uvicorn."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from functools import partial

import click
import psycopg
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from db.connect import resolve
from db.embedded import pgdata_path
from db.errors import DatabaseError, one_line
from db.logs import configure_logging, get_logger
from db.redact import environment_secrets, redact
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues.catalog import load_catalog
from queues.contract import describe_validation_error
from queues.errors import QueueError
from web.app import create_app
from web.metrics import with_metrics
from web.settings import DEFAULT_IMPORTS, WebSettings

GRACEFUL_SHUTDOWN_S = 5  # open SSE streams are cut after this; browsers' EventSource reconnects
# With PGMQ_WORKER_WEB_WORKERS > 1 each uvicorn worker process builds its own app from these: the
# handler modules to import, and DATABASE_URL set to the target this process resolved (so the
# workers share one embedded PostgreSQL, started here, instead of each starting its own).
IMPORTS_VARIABLE = "PGMQ_WORKER_WEB_IMPORTS"


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
    if settings.jwt_secret is None:  # before any database work: a configuration error
        refuse_open_endpoints(host, private=settings.web_private)
    try:
        catalog = load_catalog(imports or DEFAULT_IMPORTS)  # this process's queues, built here
        target = resolve(db_settings)
        prepare_schema(target)
    except (QueueError, DatabaseError) as exc:
        raise click.ClickException(redact(str(exc), secrets)) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"database error: {one_line(exc, secrets)}") from exc
    if target.embedded:
        click.echo(f"Using the embedded PostgreSQL in {pgdata_path(db_settings.data_dir)}", err=True)
    if settings.web_workers > 1 and settings.web_metrics_port is not None:
        # Each worker process would bind the metrics port and count only its own requests.
        raise click.ClickException(
            "PGMQ_WORKER_WEB_METRICS_PORT works with one web worker: unset it or PGMQ_WORKER_WEB_WORKERS"
        )
    # uvicorn re-raises the stop signal after its graceful shutdown; with this handler in place the
    # re-raised signal is a no-op, so a clean stop exits 0 (Fly and `dev` read the exit status).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)
    # access_log=False: uvicorn's access log prints the query string in full, and the page's
    # EventSource and <img>/<audio> URLs carry ?access_token=; web/security.py logs each request
    # (`http.request`) with the token taken out.
    serve = partial(
        uvicorn.run,
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level="info",
        access_log=False,
    )
    if settings.web_workers == 1:
        served = create_app(target, settings=settings, db_settings=db_settings, catalog=catalog)
        serve(with_metrics(served, target, settings))  # its own /metrics port, when set (web.metrics)
        return
    # uvicorn starts several workers only from an import string: each builds its app in app_factory.
    os.environ[IMPORTS_VARIABLE] = ",".join(imports or DEFAULT_IMPORTS)
    os.environ["DATABASE_URL"] = target.url
    serve("web.__main__:app_factory", factory=True, workers=settings.web_workers)


def app_factory() -> FastAPI:
    """One uvicorn worker process's app (PGMQ_WORKER_WEB_WORKERS > 1), from what main() checked."""
    configure_logging(secrets=environment_secrets(os.environ))
    settings = WebSettings()
    db_settings = DatabaseSettings()
    catalog = load_catalog(tuple(os.environ[IMPORTS_VARIABLE].split(",")))
    return create_app(resolve(db_settings), settings=settings, db_settings=db_settings, catalog=catalog)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def refuse_open_endpoints(host: str, *, private: bool) -> None:
    """Without a JWT secret, serve on loopback, or elsewhere only when declared a private service."""
    log = get_logger()
    if is_loopback(host):
        log.warning("web.auth_disabled", host=host, reason="no JWT secret; loopback only")
        click.echo("No JWT secret set: the job endpoints are open to anyone on this machine.", err=True)
        return
    if not private:
        log.error("web.refused_open", host=host, reason="no JWT secret on a non-loopback address")
        raise click.ClickException(
            f"no JWT secret set (SUPABASE_JWT_SECRET): refusing to serve the job endpoints open on {host}; "
            "set the secret, bind 127.0.0.1, or declare a private service with PGMQ_WORKER_WEB_PRIVATE=true"
        )
    log.warning(
        "web.open_endpoints",
        host=host,
        reason="PGMQ_WORKER_WEB_PRIVATE=true and no JWT secret: anyone who can reach this address "
        "can enqueue jobs and read every job",
    )
    click.echo(
        f"No JWT secret set and PGMQ_WORKER_WEB_PRIVATE=true: the job endpoints are OPEN on {host}.", err=True
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
