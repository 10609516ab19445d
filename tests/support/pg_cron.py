"""A PostgreSQL 15 cluster of the test's own with pg_cron preloaded (Debian `postgresql-15-cron`).

pg_cron must be in `shared_preload_libraries`, which the shared test server cannot change, so
`pg_cron_cluster` runs initdb into a temporary directory and starts a server on a free loopback
port, as the PgBouncer tests start their own pooler. initdb and postgres refuse to run as root:
as root (CI) they run as the `postgres` user, the directory given to it. Without pg_cron (or
PostgreSQL 15's binaries) the test is skipped, unless PGMQ_WORKER_REQUIRE_PG_CRON=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.support.ports import free_port

REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_PG_CRON"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_CRON_LIBRARY = Path("/usr/lib/postgresql/15/lib/pg_cron.so")
READY_TIMEOUT_S = 30.0


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(reason)


def _as_postgres(argv: list[str]) -> list[str]:
    """The command as the `postgres` user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(_as_postgres(argv), capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")


@contextmanager
def pg_cron_cluster() -> Iterator[str]:
    """A running PostgreSQL 15 with pg_cron preloaded (for database `postgres`); its admin URL."""
    if not PG_CRON_LIBRARY.exists() or not (PG_BIN / "initdb").exists():
        _skip_or_fail(
            f"pg_cron for PostgreSQL 15 is not installed ({PG_CRON_LIBRARY}; Debian: postgresql-15-cron)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="pgmqw-pg-cron-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no `postgres` user for initdb to run as")
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        _run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"], "initdb"
        )
        settings = (
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{workdir}'\n"
            "shared_preload_libraries = 'pg_cron'\ncron.database_name = 'postgres'\n"
            # Jobs in background workers: no libpq login back into the server to configure.
            "cron.use_background_workers = on\nmax_worker_processes = 16\nfsync = off\n"
        )
        with (data / "postgresql.conf").open("a") as conf:  # root may write the postgres user's file
            conf.write(settings)
        log = workdir / "server.log"
        _run(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
            "pg_ctl start",
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_ready(url)
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return
