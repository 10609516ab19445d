"""`pgmq-worker queue pause QUEUE` and `queue resume QUEUE`: stop and restart every worker's reads of a queue.

A bad QUEUE (not a queue name, a dead-letter queue, no such queue) or a bad `--reason` is a usage
error: the message on stderr and exit status 2, as click gives a bad argument. A database that
does not answer is exit status 1, as for every command.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from db.connect import connect
from db.logs import configure_logging
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from db.storable import escape_controls
from queues.errors import InvalidQueueName, UnknownQueue
from queues.pauses import MAX_BY, InvalidPauseNote, Pause, check_pause, pause, resume
from worker.commands.edge import one_line_errors, secrets, settings_from_env, target_of


@click.group(name="queue")
def queue_group() -> None:
    """Pause and resume a queue for the whole fleet (every worker process on every machine)."""
    # What was done is the command's output; stdout stays that alone (`--json` pipes), warnings on stderr.
    configure_logging("auto", "warning", secrets())


def operator() -> str:
    """Who pauses from this shell: user@host (what `paused_by` says when --by is not given)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:MAX_BY]


@contextmanager
def usage_errors() -> Iterator[None]:
    """A queue or note the command cannot use: exit status 2 naming the argument, not 1."""
    try:
        yield
    except (InvalidQueueName, UnknownQueue) as exc:
        raise click.BadParameter(str(exc), param_hint="QUEUE") from exc
    except InvalidPauseNote as exc:
        raise click.BadParameter(str(exc), param_hint="'--reason' / '--by'") from exc


@queue_group.command(name="pause")
@click.argument("queue")
@click.option("--reason", help="Why (at most 500 characters): the dashboard and `queue pause` show it.")
@click.option("--by", "by", help="Who pauses (default: user@host).")
@click.option("--json", "as_json", is_flag=True, help="The pause as one JSON object.")
def pause_command(queue: str, reason: str | None, by: str | None, as_json: bool) -> None:
    """Stop every worker reading QUEUE (within a poll interval); running jobs finish, sends go on."""
    who = by if by is not None else operator()
    with usage_errors():
        check_pause(queue, who, reason)  # before any connection: a bad argument needs no database
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors(), usage_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            done = pause(conn, queue, by=who, reason=reason)
    _say(done.pause, "already paused" if done.already else "paused", as_json=as_json)


@queue_group.command(name="resume")
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help="The pause lifted as one JSON object.")
def resume_command(queue: str, as_json: bool) -> None:
    """Let workers read QUEUE again (at once where they listen, else within a poll interval)."""
    with usage_errors():
        check_pause(queue)
    db_settings = settings_from_env(DatabaseSettings)
    with one_line_errors(), usage_errors():
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            lifted = resume(conn, queue)
    if lifted is None:
        said: dict[str, Any] = {"queue": queue, "result": "not paused"}
        click.echo(json.dumps(said) if as_json else f"{queue}: not paused")
        return
    _say(lifted, "resumed", as_json=as_json)


def _say(p: Pause, result: str, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**p.as_json(), "result": result}))
        return
    since = "" if result == "paused" else f" (paused since {p.paused_at:%Y-%m-%d %H:%M:%S %Z})"
    # Whoever paused wrote these: control characters are shown escaped, never sent to the terminal.
    who = f" by {escape_controls(p.paused_by)}" if p.paused_by else ""
    why = f": {escape_controls(p.reason)}" if p.reason else ""
    click.echo(f"{p.queue}: {result}{since}{who}{why}")
