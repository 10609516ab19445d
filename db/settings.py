"""Database settings, read from the environment once at the CLI edge and passed down."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.durations import NonNegative


class PoolerMode(StrEnum):
    """What sits between us and Postgres, which decides prepared statements and LISTEN."""

    AUTO = "auto"  # port 6543 means a transaction pooler (Supabase Supavisor); anything else direct
    DIRECT = "direct"  # a Postgres server, or a pooler in session mode: LISTEN works
    TRANSACTION = "transaction"  # PgBouncer/Supavisor in transaction mode: no LISTEN, no prepares


class DatabaseSettings(BaseSettings):
    """Where Postgres is and how we talk to it."""

    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="Postgres URL; unset means the embedded PostgreSQL under `PGMQ_WORKER_DATA_DIR`. On "
        "Supabase: the direct connection or the session pooler (port 5432) for workers.",
        repr=False,  # it holds the password: a settings object in a log or traceback must not show it
    )
    pooler: PoolerMode = Field(
        default=PoolerMode.AUTO,
        description="What sits between us and Postgres: `auto` (port 6543 means a transaction pooler), "
        "`direct`, or `transaction` (any PgBouncer in transaction mode: no prepared statements, no "
        "LISTEN). Unless told `transaction`, a worker probes for a transaction pooler at start and, "
        "finding one, exits 1 with an error naming this setting.",
    )
    data_dir: Path = Field(
        default=Path(".pgmq-worker"),
        description="Where the embedded PostgreSQL keeps its data (`<dir>/pgdata`).",
    )
    pool_min_size: int = Field(default=1, ge=0, description="Connections a pool keeps open.")
    pool_max_size: int = Field(
        default=10, ge=1, description="Connections a worker's (or the web process's) pool may open."
    )
    connect_timeout: NonNegative = Field(
        default=timedelta(seconds=10), description="How long to wait for a connection."
    )
    application_name: str = Field(
        default="pgmq-worker",
        description="The `application_name` our connections show in `pg_stat_activity`.",
    )
