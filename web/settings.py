"""Web process settings from the environment (PGMQ_WORKER_*; the JWT secret also as SUPABASE_JWT_SECRET)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.durations import Interval, NonNegative

# The handler modules a web process imports when none are named (`--import`, `modules=`).
DEFAULT_IMPORTS = ("handlers",)
MIN_SECRET_LENGTH = 16  # Supabase's are 40+; anything this short is a mistake, not a secret


class WebSettings(BaseSettings):
    """How the web process authenticates callers and streams job changes."""

    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_", extra="ignore", populate_by_name=True)

    jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PGMQ_WORKER_JWT_SECRET", "SUPABASE_JWT_SECRET"),
        description="The Supabase JWT secret (16+ characters) access tokens are checked against: set, "
        "every endpoint but `/` and `/healthz` needs a user's token (`/queues`, `/docs` and "
        "`/openapi.json` too). Unset, the endpoints are open, which the web process allows on a "
        "loopback address only, or anywhere with `PGMQ_WORKER_WEB_PRIVATE=true`.",
    )
    jwt_audience: str = Field(default="authenticated", description="The `aud` tokens must carry.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="A bearer token (16+ characters) that makes its caller an admin, who may act on "
        "every user's jobs (cancel them, the dashboard). A Supabase JWT whose `role` claim is "
        "`service_role` (the service key) is an admin too. Unset: only the service key is.",
    )
    web_private: bool = Field(
        default=False,
        description=(
            "Serve the job endpoints without a JWT secret on a non-loopback address: this process"
            " is a private service that only trusted callers can reach (PGMQ_WORKER_WEB_PRIVATE)."
        ),
    )
    web_docs: bool = Field(
        default=False,
        description=(
            "Serve the OpenAPI schema and Swagger UI at /openapi.json and /docs (PGMQ_WORKER_WEB_DOCS)."
            " Off by default: Swagger UI loads its script from a CDN onto this origin."
        ),
    )

    web_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="How many uvicorn worker processes serve the web app (PGMQ_WORKER_WEB_WORKERS), each "
        "with its own database pool (`PGMQ_WORKER_POOL_MAX` connections apiece) and event listener. "
        "Above 1, uvicorn's supervisor process starts them and restarts one that dies.",
    )
    web_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve `GET /metrics` (request counts and every queue's gauges) on this port of "
        "its own, never on the app's port; unset: no metrics. See the metrics how-to.",
    )
    web_metrics_host: str = Field(
        default="::",
        description="Interface of the web metrics port (`::`: every IPv6 and IPv4 address).",
    )
    web_metrics_queue_cache: NonNegative = Field(
        default=timedelta(seconds=5),
        description="How long the web process reuses the queue gauges between scrapes.",
    )

    @field_validator("jwt_secret", "admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            what = "the JWT secret" if info.field_name == "jwt_secret" else "the admin token"
            raise ValueError(f"{what} must be at least {MIN_SECRET_LENGTH} characters")
        return value

    # SSE: a comment line this often keeps proxies from closing an idle stream, and the job row
    # is re-read then too (a safety net if a notification was missed; the only path without LISTEN).
    sse_keepalive: Interval = Field(
        default=timedelta(seconds=15),
        description="A keepalive comment on idle event streams this often (the job row is re-read then too). "
        "At least 10 ms.",
    )
    sse_poll_interval: Interval = Field(
        default=timedelta(seconds=1),
        description="How often a stream re-reads its job when LISTEN is unavailable (a transaction pooler). "
        "At least 10 ms.",
    )
