"""Errors raised by the database layer.

DatabaseError
 ├─ DatabaseUnavailable   the server cannot be reached (or the embedded one cannot start)
 ├─ PgmqUnsupported       pgmq is missing and cannot be installed, or is older than 1.4
 └─ MigrationError        a migration file failed or the applied history does not match the files
"""

from __future__ import annotations


class DatabaseError(Exception):
    """A database-layer problem."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached."""


class PgmqUnsupported(DatabaseError):
    """pgmq is not installed, cannot be installed here, or is older than 1.4."""


class MigrationError(DatabaseError):
    """A migration failed, or the applied history does not match the migration files."""
