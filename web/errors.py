"""API errors: an HTTP status, a stable machine-readable code and a sentence for people."""

from __future__ import annotations

from typing import Any

from queues.errors import InvalidPayload, InvalidQueueName, PayloadTooLarge, QueueError, UnknownQueue


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


def database_unavailable(retry_after_s: int) -> ApiError:
    """The database cannot be reached now: 503, retry after a few seconds."""
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; retry shortly",
        {"Retry-After": str(retry_after_s)},
    )
