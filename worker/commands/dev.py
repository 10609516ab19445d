"""`pgmq-worker web` and `pgmq-worker dev`: the web process, alone or beside a worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import click
import httpx

from db.connect import connect
from db.logs import configure_logging, get_logger
from db.migrate import migrate as apply_migrations
from db.pgmq_install import ensure_installed
from db.settings import DatabaseSettings
from queues import pgmq
from worker.commands.edge import (
    concurrency_option,
    freeze_startup_objects,
    imports_option,
    load_registry,
    metrics_port_option,
    one_line_errors,
    require_handlers,
    secrets,
    settings_from_env,
    target_of,
    threads_option,
)
from worker.loop import run as run_loop
from worker.runner import Worker
from worker.settings import WorkerSettings

WEB_MODULE = "web"  # the web process is its own program (`python -m web`): the worker never imports it


def _web_argv(host: str, port: int, imports: tuple[str, ...]) -> list[str]:
    argv = [sys.executable, "-m", WEB_MODULE, "--host", host, "--port", str(port)]
    for module in imports:
        argv += ["--import", module]
    return argv


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind.")
@imports_option
def web(host: str, port: int, imports: tuple[str, ...]) -> None:
    """Run the web process: POST /jobs/{queue}, GET /jobs/{id}, its event stream, /healthz and /."""
    sys.stdout.flush()
    os.execv(sys.executable, _web_argv(host, port, imports))  # noqa: S606  (our own interpreter and module)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the web process binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Web port.")
@imports_option
@concurrency_option
@threads_option
@metrics_port_option
def dev(  # noqa: PLR0917  (click passes every option)
    host: str,
    port: int,
    imports: tuple[str, ...],
    concurrency: int | None,
    threads: int | None,
    metrics_port: int | None,
) -> None:
    """Everything in one command: database, migrations, the web process and a worker.

    Uses the embedded PostgreSQL unless DATABASE_URL is set. Ctrl-C stops it all.
    """
    settings = settings_from_env(
        WorkerSettings, concurrency=concurrency, threads=threads, metrics_port=metrics_port
    )
    db_settings = settings_from_env(DatabaseSettings)
    configure_logging(settings.log_format, settings.log_level, secrets())
    registry = load_registry(imports)
    with one_line_errors():
        require_handlers(registry, imports)
        target = target_of(db_settings)
        with connect(target) as conn:
            ensure_installed(conn)
            apply_migrations(conn)
            for task in registry:
                pgmq.ensure_queue(conn, task.queue)
    env = {**os.environ, "DATABASE_URL": target.url}
    web_process = subprocess.Popen(_web_argv(host, port, imports), env=env)  # noqa: S603
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"  # noqa: S104
        _wait_for_web(web_process, url)
        click.echo(f"\npgmq-worker dev: open {url}  (Ctrl-C stops the web process and the worker)")
        note = "open to this machine; elsewhere it needs the admin token"
        click.echo(f"pgmq-worker dev: dashboard {url}dashboard  ({note})\n")
        freeze_startup_objects()
        worker = Worker(target, registry, settings, db_settings)
        with one_line_errors():
            run_loop(_run_beside(worker, web_process), settings.event_loop)
    finally:
        _stop_process(web_process)
    if web_process.returncode not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise click.ClickException(f"the web process exited with status {web_process.returncode}")


def _wait_for_web(process: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Until GET /healthz answers 200; ClickException if the web process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(
                f"the web process exited with status {process.returncode} before serving {url} "
                "(is the port in use? try --port)"
            )
        try:
            if httpx.get(f"{url}healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the web process did not answer on {url} within {timeout:.0f} s")


async def _run_beside(worker: Worker, process: subprocess.Popen[bytes]) -> None:
    """Run the worker; stop it if the web process dies, so `dev` never half-runs."""

    async def watch() -> None:
        while process.poll() is None:  # noqa: ASYNC110  (a thread in wait() would outlive asyncio.run)
            await asyncio.sleep(0.5)
        get_logger().warning("dev.web_exited", status=process.returncode)
        worker.stop()

    watcher = asyncio.create_task(watch())
    try:
        await worker.run()
    finally:
        watcher.cancel()


def _stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
