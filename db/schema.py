"""Before a process starts: the schema it needs must be there."""

from __future__ import annotations

from db.connect import Target, connect
from db.errors import MigrationError
from db.migrate import migrate, status
from db.pgmq_install import PgmqFeatures, detect, ensure_installed


def prepare_schema(target: Target) -> PgmqFeatures:
    """The embedded database migrates itself; any other must have been migrated already.

    Returns what the installed pgmq offers. MigrationError (run `pgmq-worker migrate`) when
    migrations are pending; PgmqUnsupported when pgmq is missing or too old.
    """
    with connect(target) as conn:
        if target.embedded:
            features = ensure_installed(conn)
            migrate(conn)
            return features
        features = detect(conn)
        pending = [f"{m.version:04d}_{m.name}" for m in status(conn) if m.applied_at is None]
        if pending:
            raise MigrationError(
                f"{len(pending)} migration(s) pending on {target.describe()} ({', '.join(pending)}): "
                "run `pgmq-worker migrate`"
            )
        return features
