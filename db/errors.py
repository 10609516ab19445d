"""Errors raised by the database layer.

DatabaseError
 ├─ DatabaseUnavailable   the server cannot be reached (or the embedded one cannot start)
 ├─ PgmqUnsupported       pgmq is missing and cannot be installed, or is older than 1.4
 └─ MigrationError        a migration file failed or the applied history does not match the files
"""

from __future__ import annotations

from collections.abc import Iterable

from db.redact import redact


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


def one_line(exc: BaseException | str, secrets: Iterable[str] = (), *, lines: int = 1) -> str:
    """An error's message for a log field or an `Error:` line: its first `lines` lines joined, secrets masked.

    An exception with no message gives its class name.
    """
    # Masked before it is cut: a password may hold a line break of its own (U+0085).
    text = redact(str(exc), tuple(secrets)).strip()
    if not text:
        return exc if isinstance(exc, str) else type(exc).__name__
    return " ".join(text.splitlines()[:lines])
