"""Database settings, read from the environment once at the CLI edge and passed down."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.durations import Duration


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
        description="Postgres URL; unset means the embedded PostgreSQL under data_dir.",
        repr=False,  # it holds the password: a settings object in a log or traceback must not show it
    )
    pooler: PoolerMode = PoolerMode.AUTO
    data_dir: Path = Path(".pgmq-worker")
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    connect_timeout: Duration = timedelta(seconds=10)
    application_name: str = "pgmq-worker"
