"""Settings -> connections, migrations, pgmq installation and the embedded default.

Imports none of the project's other packages.
"""

from db.connect import Target, aconnect, async_pool, connect, resolve, sync_pool
from db.errors import DatabaseError, DatabaseUnavailable, MigrationError, PgmqUnsupported
from db.migrate import migrate, status
from db.pgmq_install import PgmqFeatures, detect, ensure_installed
from db.settings import DatabaseSettings, PoolerMode

__all__ = [
    "DatabaseError",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "MigrationError",
    "PgmqFeatures",
    "PgmqUnsupported",
    "PoolerMode",
    "Target",
    "aconnect",
    "async_pool",
    "connect",
    "detect",
    "ensure_installed",
    "migrate",
    "resolve",
    "status",
    "sync_pool",
]
