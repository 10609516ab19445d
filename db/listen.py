"""Hold a LISTEN connection: reconnect with backoff, report each notification and each (re)connect.

Notifications can be missed while the connection is down, so `on_connect` runs after every
(re)connect: callers re-check whatever they are waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from db.backoff import reconnect_backoff
from db.connect import Target, aconnect
from db.durations import Seconds
from db.errors import DatabaseUnavailable, one_line
from db.logs import get_logger

log = get_logger()


async def sleep_or_stop(stopping: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, returning early when `stopping` is set.

    Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives as the event is
    set (the inner wait is done, so it returns), and a worker that sets `stopping` and then cancels
    its side tasks at once waited for ever for one that looped on.
    """
    if stopping.is_set():
        return
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({stopped}, timeout=delay)
    finally:
        stopped.cancel()


async def listen(
    target: Target,
    channels: Sequence[str],
    *,
    on_notify: Callable[[str, str], None],
    on_connect: Callable[[bool], None],
    stopping: asyncio.Event,
    reconnect_max: Seconds,
) -> None:
    """LISTEN on `channels` until `stopping` is set; `on_notify(channel, payload)` for each message.

    `on_connect(True)` after every successful (re)connect, `on_connect(False)` when the
    connection is lost.
    """
    backoff = reconnect_backoff(reconnect_max)
    failures = 0
    while not stopping.is_set():
        try:
            conn = await aconnect(target)
        except DatabaseUnavailable as exc:
            failures += 1
            log.warning("listener.reconnecting", error=str(exc), attempt=failures)
            await sleep_or_stop(stopping, backoff.delay(failures))
            continue
        try:
            async with conn:
                for name in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
                failures = 0
                log.debug("listener.started", channels=list(channels))
                on_connect(True)
                while not stopping.is_set():
                    # A bounded wait, so a stop is noticed and a dead connection surfaces as an error.
                    async for note in conn.notifies(timeout=1.0, stop_after=64):
                        on_notify(note.channel, note.payload)
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            failures += 1
            log.warning("listener.lost", error=one_line(exc), attempt=failures)
            on_connect(False)
            await sleep_or_stop(stopping, backoff.delay(failures))
