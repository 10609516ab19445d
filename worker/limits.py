"""Shared limits for external APIs, enforced through Postgres across every worker and machine.

    LLM = Limit("llm", concurrency=5, per_minute=60)

    async with ctx.limit(LLM):
        response = await client.post(...)

At most `concurrency` blocks hold the limit at once and at most `per_minute` enter it a minute
(a token bucket holding one second's share, at least one: a steady rate, never a minute's burst
at once), whichever worker process or machine they run in. A holder that crashes frees its slot
after `hold_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from db.backoff import jittered
from db.errors import one_line
from db.logs import get_logger
from worker.errors import HandlerRegistrationError

log = get_logger()
ACQUIRE = "SELECT pgmq_worker.limit_acquire(%s, %s, %s, %s, %s)"
RELEASE = "DELETE FROM pgmq_worker.limit_holds WHERE name = %s AND holder = %s"
MAX_WAIT_S = 5.0  # ask again at least this often while waiting


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit: at most `concurrency` at once, at most `per_minute` a minute (either or both)."""

    name: str
    concurrency: int | None = None
    per_minute: float | None = None
    hold_s: float = 600.0  # a crashed holder's slot comes back after this

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100:
            raise HandlerRegistrationError("a limit's name is 1-100 characters")
        if self.concurrency is None and self.per_minute is None:
            raise HandlerRegistrationError(f"limit {self.name!r} needs concurrency, per_minute or both")
        if self.concurrency is not None and (not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise HandlerRegistrationError(f"limit {self.name!r}: concurrency must be an integer >= 1")
        if self.per_minute is not None and not self.per_minute > 0:
            raise HandlerRegistrationError(f"limit {self.name!r}: per_minute must be positive")
        if not self.hold_s > 0:
            raise HandlerRegistrationError(f"limit {self.name!r}: hold_s must be positive")


@contextlib.asynccontextmanager
async def hold(pool: AsyncConnectionPool, limit: Limit) -> AsyncIterator[None]:
    """Wait for a slot of `limit`, hold it for the block, give it back."""
    holder = uuid.uuid4()
    waited = 0.0
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                ACQUIRE, (limit.name, holder, limit.concurrency, limit.per_minute, limit.hold_s)
            )
            row = await cur.fetchone()
        wait = float(row[0]) if row else 0.0
        if wait <= 0:
            break
        # 0.8-1.2 times the wait the database named: waiters spread out instead of asking together.
        pause = jittered(1.2 * min(wait, MAX_WAIT_S), 1 / 3)
        waited += pause
        await asyncio.sleep(pause)
    if waited:
        log.debug("limit.acquired", limit=limit.name, waited_s=round(waited, 3))
    try:
        yield
    finally:
        # In a task of its own: a cancelled block must still give its slot back.
        release = asyncio.ensure_future(_release(pool, limit.name, holder))
        await asyncio.shield(release)


async def _release(pool: AsyncConnectionPool, name: str, holder: uuid.UUID) -> None:
    try:
        async with pool.connection(timeout=5) as conn:
            await conn.execute(RELEASE, (name, holder))
    except Exception as exc:  # the hold expires on its own after hold_s
        log.warning("limit.release_failed", limit=name, error=one_line(exc))
