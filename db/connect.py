"""Settings -> a database target that knows whether it may LISTEN and prepare statements."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from db import storable
from db.embedded import embedded_url, pgdata_path
from db.errors import DatabaseUnavailable, one_line
from db.redact import mask_url, reserved_in_password, url_secrets
from db.settings import DatabaseSettings, PoolerMode

SUPAVISOR_TRANSACTION_PORT = 6543
BACKEND_PID = "SELECT pg_backend_pid()"


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved database: its URL and what the connection path between us allows."""

    url: str = field(repr=False)  # it holds the password: describe() is what may be shown
    transaction_pooler: bool
    embedded: bool = False
    application_name: str = "pgmq-worker"
    connect_timeout_s: int = 10

    @property
    def allows_listen(self) -> bool:
        """LISTEN needs a session that stays ours; a transaction pooler reassigns it per transaction."""
        return not self.transaction_pooler

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect / the pools."""
        kwargs: dict[str, Any] = {
            "application_name": self.application_name,
            "connect_timeout": self.connect_timeout_s,
        }
        if self.transaction_pooler:
            # Prepared statements live in one server session; a transaction pooler moves us
            # between sessions, so psycopg must never prepare.
            kwargs["prepare_threshold"] = None
        return kwargs

    def secrets(self) -> tuple[str, ...]:
        """What must never be printed: the URL's password (see db.redact)."""
        return url_secrets(self.url)

    def describe(self) -> str:
        """Where this points, with any password masked, for logs and CLI output."""
        info = conninfo.conninfo_to_dict(self.url)
        host = info.get("host") or "localhost"
        where = f"{info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        mode = "transaction pooler" if self.transaction_pooler else "direct"
        return f"{where} ({mode}{', embedded' if self.embedded else ''})"


def resolve(settings: DatabaseSettings) -> Target:
    """Decide the URL (starting the embedded server when DATABASE_URL is unset) and pooler mode."""
    timeout = max(1, int(settings.connect_timeout.total_seconds()))
    if settings.database_url is None:
        try:
            url = embedded_url(settings.data_dir)
        except Exception as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL under {pgdata_path(settings.data_dir)}: {exc}"
            ) from exc
        return Target(url, False, True, settings.application_name, timeout)
    url = settings.database_url
    if reserved_in_password(url):
        # libpq would split the password there, take its tail for the host (or port, or
        # database) and print it in every error.
        raise DatabaseUnavailable(
            "DATABASE_URL's password holds '@', '/', '?' or '#': percent-encode them "
            f"(%40, %2F, %3F, %23): {mask_url(url)}"
        )
    try:
        info = conninfo.conninfo_to_dict(url)
    except (psycopg.ProgrammingError, UnicodeDecodeError) as exc:
        # libpq quotes the bad part, often the password itself; `from None` keeps the original
        # message out of tracebacks too. A percent-escape that is not UTF-8 (`%80`) fails in
        # psycopg's decoding of what libpq parsed.
        raise DatabaseUnavailable(
            f"DATABASE_URL is not a valid Postgres URL: {one_line(exc, url_secrets(url))}"
        ) from None
    if settings.pooler is PoolerMode.AUTO:
        pooled = str(info.get("port", "")) == str(SUPAVISOR_TRANSACTION_PORT)
    else:
        pooled = settings.pooler is PoolerMode.TRANSACTION
    return Target(settings.database_url, pooled, False, settings.application_name, timeout)


def connect(target: Target, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """One synchronous connection, with a one-line error when the database cannot be reached."""
    try:
        conn = psycopg.connect(target.url, autocommit=autocommit, **target.connect_kwargs())
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _unavailable(target, exc) from None
    configure(conn)
    return conn


async def aconnect(target: Target, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
    """One asynchronous connection, with a one-line error when the database cannot be reached."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            target.url, autocommit=autocommit, **target.connect_kwargs()
        )
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _unavailable(target, exc) from None
    configure(conn)
    return conn


def configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """What every connection we open reads differently from psycopg's defaults: json and jsonb
    with storable.read_jsonb (the stdlib's reading, faster). On the connection only: psycopg's
    global adapters, which a handler's own connections use, stay as they are."""
    set_json_loads(storable.read_jsonb, conn)


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    configure(conn)


class CheckWhenIdle:
    """A pool's checkout check that tests only connections idle for longer than `idle_s`.

    A connection handed back a moment ago is as good as the statement it just ran; one that sat
    in the pool may have been cut meanwhile (a database restart, a pooler's idle timeout) and
    costs one round trip first. Testing every checkout was a second round trip per request, half
    the database work of `POST /jobs`. The pool calls `reset` when a connection comes back.
    """

    def __init__(self, idle_s: float = 2.0) -> None:
        self.idle_s = idle_s
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Test the connection unless it came back within `idle_s` (raises if it is broken)."""
        returned = self._returned.pop(conn, None)
        if returned is None or time.monotonic() - returned > self.idle_s:
            await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The connection is back in the pool, healthy (the pool discards broken ones first)."""
        self._returned[conn] = time.monotonic()


def async_pool(
    target: Target, *, min_size: int, max_size: int, check: bool = False, timeout: float = 30.0
) -> AsyncConnectionPool:
    """An autocommit async pool; `check` tests connections idle for a while at checkout (web requests).

    `timeout`: how long `connection()` waits for a connection by default (web requests: seconds).

    The worker passes check=False: a check costs a round trip per ack (18% of a no-op worker's
    time), so it retries on connection errors and calls pool.check() to purge the rest.
    """
    idle = CheckWhenIdle() if check else None
    return AsyncConnectionPool(
        target.url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **target.connect_kwargs()},
        check=idle.check if idle else None,
        reset=idle.reset if idle else None,
        configure=_configure_async,
        open=False,
        timeout=timeout,
        reconnect_timeout=24 * 3600,  # keep trying: a worker outlives database restarts
    )


def sync_pool(target: Target, *, min_size: int, max_size: int) -> ConnectionPool:
    """An autocommit sync pool (web processes, Flask) that checks connections before use."""
    return ConnectionPool(
        target.url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **target.connect_kwargs()},
        check=ConnectionPool.check_connection,
        configure=configure,
        open=False,
    )


def transaction_pooler_evidence(target: Target) -> str | None:
    """What shows that `target` goes through a transaction pooler, or None when nothing does.

    A transaction pooler hands a client's server session to other clients between transactions.
    Two connections: the first runs a statement (its session goes back to the pool, if pooled),
    then the second holds a transaction while the first runs another. Straight to Postgres (or
    through a session pooler) each connection keeps its own session: two different backend pids,
    the first's unchanged. A transaction pooler shows one of two things: the second was given the
    first's session (PgBouncer and Supavisor reuse the session freed last), or the first was
    moved to another. Three statements at start; no false positive on a direct connection.
    """
    with connect(target) as first, connect(target) as second:
        before = _backend_pid(first)
        with second.transaction():
            other = _backend_pid(second)
            after = _backend_pid(first)
    if other == before:
        return f"two connections shared one server session (backend pid {before})"
    if after != before:
        return f"one connection moved between server sessions (backend pid {before}, then {after})"
    return None


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(BACKEND_PID).fetchone()
    if row is None:  # pragma: no cover  (SELECT always returns its row)
        raise DatabaseUnavailable("pg_backend_pid() returned no row")
    return int(row[0])


def _unavailable(target: Target, exc: psycopg.Error) -> DatabaseUnavailable:
    """A one-line error without the password (`from None` at the raise: the cause may quote it)."""
    return DatabaseUnavailable(f"cannot reach {target.describe()}: {one_line(exc, target.secrets())}")
