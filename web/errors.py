"""API errors: an HTTP status, a stable machine-readable code and a sentence for people."""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg_pool import PoolTimeout
from starlette.responses import JSONResponse

from db.errors import one_line
from db.logs import get_logger
from queues.errors import InvalidPayload, InvalidQueueName, PayloadTooLarge, QueueError, UnknownQueue

log = get_logger()
# What a request that needs the database meets when it cannot have it: 503 with Retry-After.
DB_ERRORS: Final = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
RETRY_AFTER_S: Final = 5


class ApiError(Exception):
    """An error the client caused (4xx) or that it may retry (503); rendered as a JSON body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """`{"error": {"code": ..., "message": ...}}`."""
        return {"error": {"code": self.code, "message": self.message}}


def from_queue_error(exc: QueueError) -> ApiError:
    """Map a queues/ error to its HTTP answer."""
    if isinstance(exc, PayloadTooLarge):
        return ApiError(413, "payload_too_large", str(exc))
    if isinstance(exc, InvalidPayload):
        return ApiError(422, "invalid_payload", str(exc))
    if isinstance(exc, UnknownQueue | InvalidQueueName):
        return ApiError(404, "unknown_queue", str(exc))
    return ApiError(400, "bad_request", str(exc))


def job_not_found(job_id: str) -> ApiError:
    """The same answer for a job that does not exist and one the caller may not see."""
    return ApiError(404, "unknown_job", f"no job {job_id!r}")


def artifact_not_found(job_id: str, name: str) -> ApiError:
    """A job the caller may see has no file by that name."""
    return ApiError(404, "unknown_artifact", f"job {job_id!r} has no artifact {name!r}")


def database_error(exc: Exception) -> JSONResponse:
    """The answer (and the log line) for one of DB_ERRORS: 503, retry after RETRY_AFTER_S."""
    log.warning("web.database_unavailable", error=type(exc).__name__, detail=one_line(exc))
    error = database_unavailable(RETRY_AFTER_S)
    return JSONResponse(error.body(), error.status, headers=error.headers)


def database_unavailable(retry_after_s: int) -> ApiError:
    """The database cannot be reached now: 503, retry after a few seconds."""
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; retry shortly",
        {"Retry-After": str(retry_after_s)},
    )
