"""The `pgmq-worker` command line: the group, with each command from its module in worker/commands/.

run (worker.commands.run) · migrate, stop-embedded (.database) · send (.send) · queues, dlq
list|replay|purge (.inspect) · retry, prune (.retention) · web, dev (.dev) · cancel (.cancel) ·
schedules (.schedules) · workers, stats (.observe) · queue pause|resume (.pause). Shared edge
work (settings, one-line errors, --import) is worker.commands.edge.
"""

from __future__ import annotations

import sys

import click

from worker.commands.cancel import cancel_jobs
from worker.commands.database import migrate, stop_embedded_server
from worker.commands.dev import dev, web
from worker.commands.inspect import dlq, list_queues
from worker.commands.observe import list_workers_command, stats
from worker.commands.pause import queue_group
from worker.commands.retention import prune, retry
from worker.commands.run import run
from worker.commands.schedules import list_schedules
from worker.commands.send import send


@click.group()
@click.version_option(package_name="pgmq-worker")
def main() -> None:
    """pgmq-worker: background jobs on Postgres queues (pgmq / Supabase Queues)."""


for command in (
    run,
    migrate,
    send,
    list_queues,
    dlq,
    retry,
    prune,
    web,
    dev,
    stop_embedded_server,
    list_schedules,
):
    main.add_command(command)
for command in (cancel_jobs, list_workers_command, stats, queue_group):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
