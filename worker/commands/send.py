"""`pgmq-worker send QUEUE PAYLOAD`: one message from the command line, checked like an enqueue."""

from __future__ import annotations

import json

import click

from db import storable
from db.connect import connect
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import pgmq
from queues.contract import Contract, QueueRef
from queues.enqueue import delay_seconds, enqueue, prepare
from queues.errors import UnknownQueue
from queues.names import validate_queue_name
from worker.commands.edge import (
    imports_option,
    load_registry,
    one_line_errors,
    settings_from_env,
    target_of,
)
from worker.registry import HandlerSpec, Registry


@click.command()
@click.argument("queue")
@click.argument("payload")
@click.option("--delay", type=click.FloatRange(0), default=0.0, help="Seconds before it becomes visible.")
@imports_option
def send(queue: str, payload: str, delay: float, imports: tuple[str, ...]) -> None:
    """Send one JSON object to QUEUE (validated against its handler's model when one is known)."""
    try:
        body = storable.loads(payload)
    except storable.InvalidJson as exc:
        raise click.ClickException(f"PAYLOAD is not valid JSON: {exc}") from None
    db_settings = settings_from_env(DatabaseSettings)
    registry = load_registry(imports)
    with one_line_errors():
        validate_queue_name(queue)
        known = _known(registry, queue)
        ref: QueueRef = Contract(queue, known.model) if known and known.model else queue
        _, checked = prepare(ref, body)  # refuse a bad payload before touching the database
        target = target_of(db_settings)
        prepare_schema(target)
        with connect(target) as conn:
            if known is not None:
                pgmq.ensure_queue(conn, queue)
            elif not pgmq.queue_exists(conn, queue):
                raise UnknownQueue(f"no queue named {queue!r} and no handler registered for it")
            if known is not None and not known.job_rows:  # the message alone: there is no job
                msg_id = pgmq.send(conn, queue, checked, delay_seconds(delay))
                click.echo(json.dumps({"queue": queue, "msg_id": msg_id, "job_id": None}))
                return
            sent = enqueue(conn, ref, body, delay=delay)
    click.echo(json.dumps({"queue": sent.queue, "msg_id": sent.msg_id, "job_id": str(sent.job_id)}))


def _known(reg: Registry, queue: str) -> HandlerSpec | None:
    try:
        return reg.get(queue)
    except UnknownQueue:
        return None
