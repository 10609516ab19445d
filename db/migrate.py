"""Numbered SQL migrations, applied in order, each in its own transaction, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from db.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

LOCK = "SELECT pg_advisory_xact_lock(hashtext('pgmq_worker.migrate'))"
HISTORY_TABLE = """
CREATE SCHEMA IF NOT EXISTS pgmq_worker;
CREATE TABLE IF NOT EXISTS pgmq_worker.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED = "SELECT version, name, checksum, applied_at FROM pgmq_worker.schema_migrations ORDER BY version"
HISTORY_EXISTS = "SELECT to_regclass('pgmq_worker.schema_migrations') IS NOT NULL"
RECORD = "INSERT INTO pgmq_worker.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file, so an edited, already-applied migration is noticed."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """A migration file and, when applied, when."""

    version: int
    name: str
    applied_at: datetime | None


def load_migrations() -> list[Migration]:
    """The migration files shipped in db/migrations, in order."""
    found: list[Migration] = []
    for entry in MIGRATIONS_DIR.iterdir():
        match = FILENAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str, datetime]]:
    row = conn.execute(HISTORY_EXISTS).fetchone()
    if row is None or not row[0]:
        return {}
    return {int(r[0]): (str(r[1]), str(r[2]), r[3]) for r in conn.execute(APPLIED).fetchall()}


def status(conn: psycopg.Connection[Any]) -> list[MigrationStatus]:
    """Every migration file with its applied time (None when pending)."""
    applied = _applied(conn)
    return [
        MigrationStatus(m.version, m.name, applied[m.version][2] if m.version in applied else None)
        for m in load_migrations()
    ]


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply pending migrations; returns what was applied (empty when already current).

    Each migration runs in its own transaction that first takes a transaction-level advisory
    lock and re-reads the history, so a second process migrating at once waits, then skips what
    the first applied. Transaction-level (not session) locks keep this safe through a
    transaction pooler, which may hand each transaction a different server session.
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection; it manages transactions")
    migrations = load_migrations()
    with conn.transaction():
        conn.execute(LOCK)
        conn.execute(HISTORY_TABLE)
        _check_history(_applied(conn), migrations)
    done: list[Migration] = []
    for m in migrations:
        try:
            with conn.transaction():
                conn.execute(LOCK)
                if m.version in _applied(conn):
                    continue
                conn.execute(m.sql)
                conn.execute(RECORD, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
        done.append(m)
    return done


def _check_history(applied: dict[int, tuple[str, str, datetime]], migrations: list[Migration]) -> None:
    for m in migrations:
        if m.version in applied and applied[m.version][1] != m.checksum:
            raise MigrationError(f"migration {m.version:04d}_{m.name} was changed after it was applied")
