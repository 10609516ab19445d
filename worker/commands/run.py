"""`pgmq-worker run`: a worker (or, with --processes N, a supervisor of N) for the handlers' queues."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import click

from db.logs import configure_logging, get_logger
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues.names import validate_queue_name
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
from worker.supervisor import Supervisor, child_argv, child_env


@click.command()
@imports_option
@click.option("--queue", "queues", multiple=True, metavar="NAME", help="Only these queues (repeatable).")
@concurrency_option
@threads_option
@metrics_port_option
@click.option("--burst", is_flag=True, help="Exit 0 once the queues are empty and nothing is in flight.")
@click.option("--poll-interval", type=click.FloatRange(0.01), help="Seconds between polls.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on this machine (a supervisor restarts any that dies).",
)
def run(  # noqa: PLR0917  (click passes every option)
    imports: tuple[str, ...],
    queues: tuple[str, ...],
    concurrency: int | None,
    threads: int | None,
    metrics_port: int | None,
    burst: bool,
    poll_interval: float | None,
    processes: int,
) -> None:
    """Run a worker for the registered handlers' queues."""
    settings = settings_from_env(
        WorkerSettings,
        concurrency=concurrency,
        threads=threads,
        metrics_port=metrics_port,
        poll_interval=None if poll_interval is None else timedelta(seconds=poll_interval),
    )
    db_settings = settings_from_env(DatabaseSettings)
    configure_logging(settings.log_format, settings.log_level, secrets())
    registry = load_registry(imports)
    with one_line_errors():
        for q in queues:
            validate_queue_name(q)
        require_handlers(registry, imports)
        for q in queues:
            registry.get(q)
        target = target_of(db_settings)
        prepare_schema(target)
        freeze_startup_objects()
        if processes > 1:
            args = [*_repeat("--import", imports), *_repeat("--queue", queues)]
            args += ["--concurrency", str(settings.concurrency), "--threads", str(settings.threads)]
            args += ["--poll-interval", str(settings.poll_interval.total_seconds())]
            args += ["--burst"] if burst else []
            # Each process serves its own endpoint, on the port + its PGMQ_WORKER_PROCESS_INDEX.
            args += ["--metrics-port", str(settings.metrics_port)] if settings.metrics_port else []
            supervisor = Supervisor(child_argv(args), processes, env=child_env(target.url), burst=burst)
            sys.exit(supervisor.run())
        worker = Worker(target, registry, settings, db_settings, queues=queues, burst=burst)
        run_loop(worker.run(), settings.event_loop)
    if worker.executor.busy:
        # A `def` handler is still running after the drain (threads cannot be cancelled). Its
        # message was already released; Python would wait for the thread at exit and a stopping
        # worker would hang until the platform kills it.
        get_logger().warning("worker.exit_with_running_threads", threads=worker.executor.busy)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _repeat(flag: str, values: tuple[str, ...]) -> list[str]:
    return [part for value in values for part in (flag, value)]
