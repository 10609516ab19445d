"""Worker settings from the environment (PGMQ_WORKER_*), overridden by CLI flags at the edge."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.durations import Duration
from worker.loop import EventLoop, uvloop_installed
from worker.webhooks import secret_key


class WorkerSettings(BaseSettings):
    """How one worker process reads, leases and stops."""

    # hide_input_in_errors: a refused webhook_secret must not be echoed by str(ValidationError).
    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_", extra="ignore", hide_input_in_errors=True)

    # Handlers at once. An `async def` slot costs a coroutine, and the read asks for as many
    # messages as slots are free: 100 reads in batches of 100 (README: Configuration).
    concurrency: int = Field(default=100, ge=1, le=1000)
    # Of those, `def` handlers at once: the threads they run in (and ctx.to_thread's work).
    threads: int = Field(default=20, ge=1, le=1000)
    poll_interval: Duration = timedelta(seconds=1)
    listen: bool = True  # set False to poll only, even where LISTEN would work
    shutdown_grace: Duration = timedelta(seconds=25)
    # At most one progress write per job per interval (Supabase Realtime counts each row change).
    progress_interval: Duration = timedelta(milliseconds=500)
    heartbeat_interval: Duration = timedelta(seconds=1)
    reconnect_max: Duration = timedelta(seconds=30)
    # Job webhooks (enqueue(..., webhook_url=...)): the signing secret (Standard Webhooks), and
    # whether URLs may resolve to private, loopback or link-local addresses (never in production).
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False
    webhook_timeout: Duration = timedelta(seconds=10)
    webhook_max_tries: int = Field(default=5, ge=1, le=20)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # uvloop where installed (it comes with uvicorn[standard]), as uvicorn's `--loop auto` does.
    event_loop: EventLoop = "auto"

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # whsec_<base64>, at least 24 bytes, as receivers read it
        return value

    @field_validator("event_loop")
    @classmethod
    def _uvloop_if_asked(cls, value: EventLoop) -> EventLoop:
        if value == "uvloop" and not uvloop_installed():
            raise ValueError("uvloop is not installed (pip install uvloop), or use auto or asyncio")
        return value
