"""Database trouble: which errors are transient, how the worker waits them out, and when it stops.

One set of transient errors for every part of the worker (the read, the settle, the lease
heartbeat, progress reports, wake-up announcements): the database or the network is away, and
the same statement may work on a new connection a moment later. Anything else from psycopg is a
statement's own problem (a dropped table, a refused value) and retrying it cannot help.

One error stops the worker instead: prepared statements that collide or vanish, which means a
transaction pooler nobody declared (PGMQ_WORKER_POOLER=transaction): every statement would fail.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from db.backoff import reconnect_delay
from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from worker.errors import PoolerMisconfigured
from worker.signals import Stop

log = get_logger()

# The database or the network is away: back off and try again on a new connection.
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)
# A transaction pooler we were not told about (see pooler_misconfigured).
PREPARED_STATEMENT_ERRORS = (
    psycopg.errors.DuplicatePreparedStatement,
    psycopg.errors.InvalidSqlStatementName,
)
# What a caller that retries catches: transient trouble, or the pooler it must stop for.
RETRIED = (*TRANSIENT, *PREPARED_STATEMENT_ERRORS)


def pooler_misconfigured(exc: BaseException) -> bool:
    """Prepared statements collide: an undeclared transaction pooler. Stop; retrying cannot help.

    Only the errors a pooler causes: a prepared statement missing or already there, or another
    client's statement run under ours' name, a protocol violation ("bind message supplies 4
    parameters, but prepared statement ... requires 3"). A data error is its message's problem,
    even at bind time: the start-up probe (db.connect.transaction_pooler_evidence) is what finds
    an undeclared pooler before any statement could collide.
    """
    if isinstance(exc, PREPARED_STATEMENT_ERRORS):
        return True
    if isinstance(exc, psycopg.errors.ProtocolViolation):
        return "prepared statement" in str(exc)
    return False


def retry_delay(failures: int, cap_s: float) -> float:
    """The reconnect policy: how long to wait after the n-th failure in a row (backoff with jitter)."""
    return reconnect_delay(failures, cap_s)


class DatabaseTrouble:
    """The worker's reaction to database errors: wait them out, or stop for a misconfigured pooler."""

    def __init__(self, pool: AsyncConnectionPool, stop: Stop, reconnect_max_s: float) -> None:
        self._pool = pool
        self._stop = stop
        self._cap_s = reconnect_max_s
        self.failures = 0  # in a row, of the read loop's statements
        self.reconnects = 0  # times the read loop got through again after failing (worker.metrics)

    def recovered(self) -> None:
        """A read loop statement worked again: the next failure waits the shortest delay."""
        if self.failures:
            self.reconnects += 1
        self.failures = 0

    async def wait_out(self, exc: BaseException) -> None:
        """The read loop failed on `exc`: stop for a pooler, else back off (never exit for it)."""
        if pooler_misconfigured(exc):
            self.stop_for_pooler(exc)
            return
        self.failures += 1
        delay = retry_delay(self.failures, self._cap_s)
        await self.purge()
        log.warning(
            "worker.database_unavailable",
            error=one_line(exc),
            retry_in_s=round(delay, 2),
            failures=self.failures,
        )
        await sleep_or_stop(self._stop.stopping, delay)

    def stop_for_pooler(self, exc: BaseException) -> None:
        """Prepared statements vanish or collide: stop, releasing what we hold; run() raises one line.

        Retrying cannot help and every settle would fail.
        """
        if self._stop.fatal is None:
            log.error("worker.pooler_misconfigured", error=one_line(exc))
            self._stop.stop_for(
                PoolerMisconfigured(
                    f"prepared statements fail ({type(exc).__name__}): DATABASE_URL goes through a "
                    "transaction pooler; set PGMQ_WORKER_POOLER=transaction"
                )
            )

    async def purge(self) -> None:
        """After one connection failed, test the idle ones so the next checkout gets a live one."""
        with contextlib.suppress(Exception):  # best effort: the caller retries either way
            await asyncio.wait_for(self._pool.check(), 5)
