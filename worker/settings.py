"""Worker settings from the environment (PGMQ_WORKER_*), overridden by CLI flags at the edge."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.durations import Duration, Interval, NonNegative
from worker.loop import EventLoop, uvloop_installed
from worker.webhook_signing import secret_key


class WorkerSettings(BaseSettings):
    """How one worker process reads, leases and stops."""

    # hide_input_in_errors: a refused webhook_secret must not be echoed by str(ValidationError).
    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_", extra="ignore", hide_input_in_errors=True)

    # The descriptions are the documentation's configuration table (docs/hooks/reference.py).
    concurrency: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="Handlers running at once (`--concurrency`), `async def` and `def` together. The "
        "read asks for as many messages as slots are free, half of them at most (so the next read "
        "overlaps the handlers the last one started): reads and acks come in batches of up to half "
        "this many; an `async` slot costs one coroutine.",
    )
    threads: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Of those, `def` handlers running at once (`--threads`): the size of their thread "
        "pool, which `ctx.to_thread` shares. A `def` queue is read only for free threads. Raise it "
        "for blocking I/O, lower it towards the number of cores for CPU-bound handlers, or use "
        "`--processes`.",
    )
    priority_share: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="The starvation guard of `@handler(..., priority=N)`: this fraction of the reads "
        "start with a queue below the worker's highest priority (the lower levels take these turns in "
        "rotation), so a low-priority backlog still moves while higher queues keep every slot busy. "
        "`0`: strict priority, a lower queue gets only the slots the higher ones leave.",
    )
    poll_interval: Interval = Field(
        default=timedelta(seconds=1),
        description="Longest wait between reads when idle (`--poll-interval`). At least 10 ms.",
    )
    listen: bool = Field(default=True, description="`false` to poll only, even where LISTEN would work.")
    shutdown_grace: NonNegative = Field(
        default=timedelta(seconds=25),
        description="How long running handlers get to finish after SIGTERM.",
    )
    progress_interval: NonNegative = Field(
        default=timedelta(milliseconds=500),
        description="At most one progress write per job per interval (Supabase Realtime counts every "
        "row change); the last report is written before the job settles. `0` writes every report.",
    )
    running_after: Interval = Field(
        default=timedelta(milliseconds=250),
        description="How long a delivery runs before its job row says `running` (at once when it "
        "reports progress, runs a step, stores an artifact or fans out); a job that ends sooner goes "
        "from `queued` straight to its outcome, one row version fewer. At least 10 ms.",
    )
    heartbeat_interval: Interval = Field(
        default=timedelta(seconds=1),
        description="How often leases due for renewal are renewed. At least 10 ms.",
    )
    cancel_grace: NonNegative = Field(
        default=timedelta(seconds=2),
        description="After a running job is cancelled (noticed within about a heartbeat interval), "
        "how long its `async def` handler may go on (seeing `ctx.cancelled`) before its task is "
        "cancelled; a `def` handler runs until it looks at `ctx.cancelled`.",
    )
    reconnect_max: Interval = Field(
        default=timedelta(seconds=30),
        description="Cap of the reconnect backoff after database trouble. At least 10 ms.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret for job webhooks (Standard Webhooks): `whsec_` and the base64 of "
        "at least 24 random bytes. Unset: no webhooks are sent.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhook URLs resolve to private, loopback or link-local addresses "
        "(development only, never in production).",
    )
    webhook_timeout: Interval = Field(
        default=timedelta(seconds=10), description="Per webhook delivery try. At least 10 ms."
    )
    webhook_max_tries: int = Field(default=5, ge=1, le=20, description="Tries per webhook event.")
    retention: Duration = Field(
        default=timedelta(days=7),
        description="How long finished jobs (succeeded, dead, cancelled: their rows, steps and "
        "artifacts) and archived messages are kept before the workers' pruner deletes them "
        "(`7d`, `12h`, seconds, ISO 8601). `0` keeps everything. The dashboard and `GET /jobs/{id}` "
        "can only show what is kept.",
    )
    retention_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="How often a worker tries to prune; one worker of the fleet holds the pruning "
        "lease at a time, another takes over within two intervals once it is gone.",
    )
    retention_batch: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Rows per pruning statement, each its own short transaction.",
    )
    registry_heartbeat: Interval = Field(
        default=timedelta(seconds=5),
        description="How often this worker refreshes its row in `pgmq_worker.workers` (`pgmq-worker "
        "workers`): a row without a heartbeat for three of these is shown `stale`. At least 10 ms.",
    )
    fly_machine_id: str | None = Field(
        default=None,
        validation_alias="FLY_MACHINE_ID",
        description="The Fly machine this worker runs on (Fly sets it), shown by `pgmq-worker workers`.",
    )
    fly_region: str | None = Field(
        default=None,
        validation_alias="FLY_REGION",
        description="The Fly region of that machine (Fly sets it), shown by `pgmq-worker workers`.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`json`, `console`, or `auto` (console on a TTY, JSON otherwise)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged."
    )
    event_loop: EventLoop = Field(
        default="auto",
        description="The worker's event loop: `auto` (uvloop where it is installed, as uvicorn's "
        "`--loop auto`: it comes with `uvicorn[standard]` on Linux and macOS; else asyncio's), "
        "`uvloop` (an error at start if it is missing) or `asyncio`. `worker.started` logs which runs.",
    )

    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve `GET /metrics` (Prometheus), `/livez` and `/readyz` on this port "
        "(`--metrics-port`); unset: no endpoint. With `--processes N` the i-th process (from 0) "
        "serves on this port + i. See the metrics how-to.",
    )
    metrics_host: str = Field(
        default="::",
        description="Interface of the metrics endpoint: `::` answers on every IPv6 and IPv4 address "
        "(Fly's scraper and machine checks reach the machine's private IPv6 address); `0.0.0.0` "
        "for IPv4 only, `127.0.0.1` to keep it on the machine.",
    )
    metrics_queue_cache: NonNegative = Field(
        default=timedelta(seconds=5),
        description="How long the queue gauges (every queue's depth, one statement) are reused "
        "between scrapes.",
    )
    loop_block_threshold: Interval = Field(
        default=timedelta(seconds=10),
        description="`/livez` answers 503 once the event loop has not answered for this long (a "
        "`def` handler holding the GIL, a blocking call in `async def` code). At least 10 ms.",
    )
    process_index: int = Field(
        default=0,
        ge=0,
        le=63,
        description="Set by `--processes N` for each worker process (0 to N-1): its metrics port is "
        "`metrics_port` + this. Not set by hand.",
    )

    @field_validator("retention", "retention_interval")
    @classmethod
    def _not_negative(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"{info.field_name} must not be negative")
        if info.field_name == "retention_interval" and value <= timedelta(0):
            raise ValueError("retention_interval must be positive")
        return value

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
