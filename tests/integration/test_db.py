"""The database layer: targets and pooler detection, migrations, pgmq install and detection."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from db.connect import CheckWhenIdle, Target, connect, resolve, transaction_pooler_evidence
from db.errors import DatabaseUnavailable, MigrationError, PgmqUnsupported
from db.migrate import Migration, load_migrations, migrate, status
from db.pgmq_install import AVAILABLE_EXTENSION, detect, ensure_installed
from db.settings import DatabaseSettings, PoolerMode
from tests.conftest import with_dbname


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """A database with nothing installed: no pgmq, no migrations."""
    name = f"pgmqw_e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    ("url", "pooler", "pooled"),
    [
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", PoolerMode.AUTO, True),
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:5432/postgres", PoolerMode.AUTO, False),
        ("postgresql://u:p@db.abc.supabase.co:5432/postgres", PoolerMode.AUTO, False),
        ("postgresql://u:p@pgbouncer.internal:6432/app", PoolerMode.TRANSACTION, True),
        ("postgresql://u:p@host:6543/app", PoolerMode.DIRECT, False),
    ],
)
def test_a_transaction_pooler_gets_no_prepares_and_no_listen(
    url: str, pooler: PoolerMode, pooled: bool
) -> None:
    """Port 6543 (Supavisor) or a declared transaction pooler disables prepared statements and LISTEN."""
    target = resolve(DatabaseSettings(database_url=url, pooler=pooler))
    assert target.transaction_pooler is pooled
    assert target.allows_listen is not pooled
    kwargs = target.connect_kwargs()
    if pooled:
        assert kwargs["prepare_threshold"] is None
    else:
        assert "prepare_threshold" not in kwargs
    assert "p@" not in target.describe()  # the password never reaches logs


def test_a_bad_database_url_is_a_clear_error() -> None:
    """A malformed DATABASE_URL says so instead of failing later."""
    with pytest.raises(DatabaseUnavailable, match="not a valid Postgres URL"):
        resolve(DatabaseSettings(database_url="postgresql://host:port:bad/x?nonsense_option=1"))


def test_an_unreachable_database_is_a_one_line_error() -> None:
    """Connecting to nothing raises DatabaseUnavailable naming where, without the password."""
    target = resolve(DatabaseSettings(database_url="postgresql://u:secret@127.0.0.1:1/nowhere"))
    with pytest.raises(DatabaseUnavailable) as info:
        connect(target)
    assert "127.0.0.1:1/nowhere" in str(info.value)
    assert "secret" not in str(info.value)
    assert "\n" not in str(info.value)


def test_unset_database_url_starts_the_embedded_server_and_reuses_it(tmp_path: Path) -> None:
    """Without DATABASE_URL the embedded PostgreSQL starts under data_dir; a second resolve reuses it."""
    settings = DatabaseSettings(database_url=None, data_dir=tmp_path / "data")
    first = resolve(settings)
    assert first.embedded
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()
    with connect(first) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        server_started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert pid is not None
    second = resolve(settings)
    with connect(second) as conn:
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone() == server_started
        assert conn.execute("SELECT current_database()").fetchone() == ("pgmq_worker",)
    from db.embedded import stop_embedded  # noqa: PLC0415

    assert stop_embedded(settings.data_dir)


def test_migrate_installs_pgmq_and_is_idempotent(empty_db: str) -> None:
    """On an empty database: pgmq installed, every migration applied once; a second run does nothing."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        with pytest.raises(PgmqUnsupported, match="not installed"):
            detect(conn)
        offered = conn.execute(AVAILABLE_EXTENSION).fetchone()
        features = ensure_installed(conn)
        if offered is None:  # no extension on this server: the `pgmq` package's SQL (1.13)
            assert (features.source, features.notify_insert) == ("sql", True)
        else:  # CREATE EXTENSION pgmq, at the version its control file names
            assert (features.source, features.version) == ("extension", offered[0])
        assert features.version.startswith("1.")
        applied = migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        assert migrate(conn) == []
        assert all(s.applied_at is not None for s in status(conn))
        assert ensure_installed(conn) == features  # a second install is a no-op


def test_status_lists_pending_migrations(empty_db: str) -> None:
    """Before migrate, every migration is listed as pending."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert [s.applied_at for s in status(conn)] == [None] * len(load_migrations())


def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db: str) -> None:
    """The advisory lock serialises concurrent migrators; the history has one row per migration."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        ensure_installed(conn)
    results: list[list[Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_db, autocommit=True) as c:
                results.append(migrate(c))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sum(len(r) for r in results) == len(load_migrations())
    with psycopg.connect(empty_db, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM pgmq_worker.schema_migrations").fetchone()
    assert count == (len(load_migrations()),)


def test_an_edited_applied_migration_is_refused(conn: psycopg.Connection[Any]) -> None:
    """If an applied migration's file changed, migrate stops instead of guessing."""
    conn.execute("UPDATE pgmq_worker.schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(conn)


def test_migrate_needs_an_autocommit_connection(db_url: str) -> None:
    """migrate() manages its own transactions."""
    with psycopg.connect(db_url) as conn, pytest.raises(MigrationError, match="autocommit"):
        migrate(conn)


def test_pgmq_older_than_1_4_is_refused(conn: psycopg.Connection[Any]) -> None:
    """A pgmq reported as 1.3 is refused with a message saying what to do."""
    if detect(conn).source == "sql":
        conn.execute("UPDATE pgmq_worker.pgmq_sql_install SET version = '1.3.2'")
    else:  # where detect reads an extension's version (a superuser may write the catalog)
        conn.execute("UPDATE pg_extension SET extversion = '1.3.2' WHERE extname = 'pgmq'")
    with pytest.raises(PgmqUnsupported, match=r"1\.3\.2 is too old.*>= 1\.4"):
        detect(conn)


def test_a_pgmq_missing_required_functions_is_refused(conn: psycopg.Connection[Any]) -> None:
    """Without the functions the worker calls, detection names what is missing."""
    if detect(conn).source == "extension":  # an extension's member is dropped from it first
        conn.execute("ALTER EXTENSION pgmq DROP FUNCTION pgmq.metrics(text)")
    conn.execute("DROP FUNCTION pgmq.metrics(text) CASCADE")
    with pytest.raises(PgmqUnsupported, match="lacks metrics"):
        detect(conn)


def test_detection_reports_what_an_older_pgmq_lacks(conn: psycopg.Connection[Any]) -> None:
    """Where enable_notify_insert and the batch set_vt are missing (Supabase's 1.5.1), the features say so."""
    conn.execute("DROP FUNCTION IF EXISTS pgmq.enable_notify_insert(text, integer) CASCADE")
    conn.execute("DROP FUNCTION IF EXISTS pgmq.set_vt(text, bigint[], integer) CASCADE")
    conn.execute("DROP FUNCTION IF EXISTS pgmq.set_vt(text, bigint[], timestamp with time zone) CASCADE")
    features = detect(conn)
    assert features.notify_insert is False
    assert features.batch_set_vt is False


def test_the_transaction_pooler_target_connects_without_prepared_statements(db_url: str) -> None:
    """A pooler target's connections never prepare, even for a repeated statement."""
    target = Target(db_url, transaction_pooler=True)
    with connect(target) as conn:
        for _ in range(10):
            conn.execute("SELECT 1 WHERE %s", (True,))
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared == (0,)


def test_the_start_probe_finds_no_pooler_on_a_direct_connection(db_url: str) -> None:
    """Straight to Postgres each connection keeps its own server session: no evidence of a pooler."""
    for _ in range(5):  # no false positive, whatever the timing
        assert transaction_pooler_evidence(Target(db_url, transaction_pooler=False)) is None


def test_the_start_probe_finds_a_real_pgbouncer_in_transaction_mode(pgbouncer_url: str) -> None:
    """Through PgBouncer in transaction mode one client's server session is handed to another
    between transactions: the probe says so, naming what it saw."""
    for _ in range(3):
        evidence = transaction_pooler_evidence(Target(pgbouncer_url, transaction_pooler=False))
        assert evidence is not None
        assert "server session" in evidence


def _cut(db_url: str, pid: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(100):  # until the backend is gone
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None:
                return
            time.sleep(0.02)


@pytest.mark.parametrize("idle_s", [0.0, 60.0])
def test_a_web_pool_tests_a_connection_that_sat_idle_and_trusts_a_fresh_one(
    target: Target, db_url: str, idle_s: float
) -> None:
    """CheckWhenIdle: a connection cut while idle longer than `idle_s` is replaced at checkout;
    one handed back within `idle_s` is handed out again without a round trip (a request on it
    fails, the pool drops it, and the next checkout gets a new one)."""

    async def go() -> None:
        idle = CheckWhenIdle(idle_s=idle_s)
        pool = AsyncConnectionPool(
            target.url,
            min_size=1,
            max_size=1,
            check=idle.check,
            reset=idle.reset,
            open=False,
            kwargs={"autocommit": True, **target.connect_kwargs()},
        )
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                first = conn.info.backend_pid
            _cut(db_url, first)
            if idle_s == 0.0:
                async with pool.connection() as conn:  # tested, found dead, replaced
                    assert conn.info.backend_pid != first
                    await conn.execute("SELECT 1")
                return
            with pytest.raises(psycopg.OperationalError):
                async with pool.connection() as conn:  # trusted: no test, and it is dead
                    await conn.execute("SELECT 1")
            async with pool.connection(timeout=10) as conn:
                assert conn.info.backend_pid != first
                await conn.execute("SELECT 1")
        finally:
            await pool.close()

    asyncio.run(go())
