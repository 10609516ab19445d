"""Install pgmq where it is missing, and detect the version and capabilities of what is there.

Supabase runs pgmq 1.5.1 (older projects 1.4.4) while the `pgmq` package ships 1.13's SQL, so the
worker asks what exists instead of assuming: see `PgmqFeatures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

from db.errors import PgmqUnsupported

MINIMUM_VERSION = (1, 4)

INSTALLED_EXTENSION = "SELECT extversion FROM pg_extension WHERE extname = 'pgmq'"
AVAILABLE_EXTENSION = "SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq'"
SCHEMA_EXISTS = "SELECT to_regclass('pgmq.meta') IS NOT NULL"
SQL_INSTALL_RECORD = "SELECT version FROM pgmq_worker.pgmq_sql_install ORDER BY installed_at DESC LIMIT 1"
RECORD_TABLE = """
CREATE SCHEMA IF NOT EXISTS pgmq_worker;
CREATE TABLE IF NOT EXISTS pgmq_worker.pgmq_sql_install (
    version text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
)
"""
RECORD_INSTALL = "INSERT INTO pgmq_worker.pgmq_sql_install (version) VALUES (%s)"
CREATE_EXTENSION = "CREATE EXTENSION IF NOT EXISTS pgmq"
INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pgmq_worker.install_pgmq'))"
FUNCTION_SIGNATURES = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pgmq'
"""
MESSAGE_RECORD_COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = 'pgmq.message_record'::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""
# The columns of what pgmq.metrics(text) returns: queue_visible_length came with pgmq 1.5.
METRICS_COLUMNS = """
SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid
WHERE t.oid = (SELECT prorettype FROM pg_proc WHERE oid = to_regprocedure('pgmq.metrics(text)'))
    AND a.attnum > 0 AND NOT a.attisdropped
"""

REQUIRED_FUNCTIONS = ("create", "read", "send", "send_batch", "delete", "archive", "set_vt", "metrics")


@dataclass(frozen=True, slots=True)
class PgmqFeatures:
    """What the installed pgmq offers, found by looking rather than by version number."""

    version: str
    source: str  # "extension" or "sql"
    notify_insert: bool  # enable_notify_insert / list_notify_insert_throttles
    batch_set_vt: bool  # set_vt(queue, bigint[], ...)
    headers: bool  # messages carry a headers column (1.5+)
    pop_qty: bool
    metrics_visible: bool  # pgmq.metrics() reports queue_visible_length (1.5+)


def _parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def detect(conn: psycopg.Connection[Any]) -> PgmqFeatures:
    """Describe the pgmq installed in this database; PgmqUnsupported when absent or too old."""
    row = conn.execute(INSTALLED_EXTENSION).fetchone()
    if row is not None:
        version, source = str(row[0]), "extension"
    else:
        schema = conn.execute(SCHEMA_EXISTS).fetchone()
        if schema is None or not schema[0]:
            raise PgmqUnsupported("pgmq is not installed in this database: run `pgmq-worker migrate`")
        recorded = _recorded_sql_version(conn)
        version, source = (recorded or "unknown"), "sql"
    if version != "unknown" and _parse_version(version) < MINIMUM_VERSION:
        raise PgmqUnsupported(
            f"pgmq {version} is too old: pgmq-worker needs pgmq >= 1.4 "
            "(ALTER EXTENSION pgmq UPDATE, or upgrade it from the Supabase dashboard)"
        )
    signatures = {str(r[0]) for r in conn.execute(FUNCTION_SIGNATURES).fetchall()}
    names = {s.split("(", 1)[0] for s in signatures}
    missing = [f for f in REQUIRED_FUNCTIONS if f not in names]
    if missing:
        raise PgmqUnsupported(f"pgmq {version} lacks {', '.join(missing)}: pgmq-worker needs pgmq >= 1.4")
    columns = {str(r[0]) for r in conn.execute(MESSAGE_RECORD_COLUMNS).fetchall()}
    metrics_columns = {str(r[0]) for r in conn.execute(METRICS_COLUMNS).fetchall()}
    return PgmqFeatures(
        version=version,
        source=source,
        notify_insert="enable_notify_insert" in names and "list_notify_insert_throttles" in names,
        batch_set_vt=any(s.startswith("set_vt(") and "bigint[]" in s for s in signatures),
        headers="headers" in columns,
        pop_qty=any(s.startswith("pop(") and "integer" in s for s in signatures),
        metrics_visible="queue_visible_length" in metrics_columns,
    )


def _recorded_sql_version(conn: psycopg.Connection[Any]) -> str | None:
    exists = conn.execute("SELECT to_regclass('pgmq_worker.pgmq_sql_install') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return None
    row = conn.execute(SQL_INSTALL_RECORD).fetchone()
    return None if row is None else str(row[0])


def ensure_installed(conn: psycopg.Connection[Any]) -> PgmqFeatures:
    """Install pgmq if missing (extension first, else the `pgmq` package's SQL) and detect it."""
    with conn.transaction():
        conn.execute(INSTALL_LOCK)  # two processes migrating at once must not both install
        if conn.execute(INSTALLED_EXTENSION).fetchone() is None:
            schema = conn.execute(SCHEMA_EXISTS).fetchone()
            if schema is None or not schema[0]:
                _install(conn)
    return detect(conn)


def _install(conn: psycopg.Connection[Any]) -> None:
    available = conn.execute(AVAILABLE_EXTENSION).fetchone()
    if available is not None:
        conn.execute(CREATE_EXTENSION)
        return
    install_sql(conn)


def install_sql(conn: psycopg.Connection[Any]) -> None:
    """Install the `pgmq` package's SQL (1.13) and record its version; for a database without pgmq."""
    try:
        script = get_embedded_install_sql()
        version = get_embedded_sql_version()
    except Exception as exc:
        raise PgmqUnsupported(f"the pgmq package's SQL could not be read: {exc}") from exc
    try:
        conn.execute(script)
    except psycopg.Error as exc:
        raise PgmqUnsupported(f"installing pgmq {version} from SQL failed: {exc}") from exc
    conn.execute(RECORD_TABLE)
    conn.execute(RECORD_INSTALL, (version,))
