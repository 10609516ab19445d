"""`POST /jobs/{queue}` without the framework: parse and check a request, shape the answer.

FastAPI (web/app.py) and Flask (web/flask_example.py) both go through here, so a payload is
refused, or a job described, in exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from db import storable
from queues.catalog import Catalog
from queues.contract import QueueRef
from queues.enqueue import MAX_PAYLOAD_BYTES, Enqueued, prepare
from queues.errors import QueueError
from queues.names import validate_queue_name
from web.errors import ApiError, from_queue_error

MAX_DELAY_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Submission:
    """A checked request: where it goes and what, ready for enqueue/aenqueue.

    `body` is already validated against the queue's model (and dumped to JSON types), so it goes
    to enqueue/aenqueue with the queue's name: a second validation would only repeat the first.
    """

    queue: str
    body: dict[str, Any]
    delay: float
    idempotency_key: str | None  # scoped to the caller: another user's key never hands back their job
    owner: UUID | None = None


def check(
    catalog: Catalog,
    queue: str,
    raw: bytes,
    *,
    delay: str | None = None,
    idempotency_key: str | None = None,
    owner: UUID | None = None,
) -> Submission:
    """Validate everything that needs no database; ApiError (4xx) for the first problem found.

    `owner`: the caller (None when auth is off), whose jobs alone its Idempotency-Key finds.
    """
    try:
        validate_queue_name(queue)
    except QueueError as exc:
        raise from_queue_error(exc) from exc
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ApiError(413, "payload_too_large", f"the body is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:  # strict JSON, however deep or odd the body: 400, never a RecursionError (500)
        parsed = storable.loads(raw) if raw.strip() else None
    except storable.InvalidJson as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if parsed is None:
        raise ApiError(400, "invalid_json", "the body must be a JSON object (the job's payload)")
    spec = catalog.get(queue)
    ref: QueueRef = spec.ref if spec is not None else queue
    try:
        name, body = prepare(ref, parsed)
    except QueueError as exc:
        raise _refused(exc) from exc
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise ApiError(400, "bad_request", "Idempotency-Key must be 1-200 characters")
    key = idempotency_key
    scoped = None if key is None else (f"{owner}:{key}" if owner is not None else key)
    return Submission(name, body, _delay(delay), scoped, owner)


def _refused(exc: QueueError) -> ApiError:
    """The 4xx for a refused payload, its message one a JSON answer can carry.

    A validation message may quote the body's own keys, lone surrogates and all.
    """
    error = from_queue_error(exc)
    return ApiError(error.status, error.code, storable.safe_text(error.message), error.headers)


def _delay(value: str | None) -> float:
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"delay must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= MAX_DELAY_S:
        raise ApiError(400, "bad_request", f"delay must be between 0 and {MAX_DELAY_S} seconds")
    return seconds


def accepted(sent: Enqueued, prefix: str = "", *, events: bool = True) -> tuple[dict[str, Any], str]:
    """The 202 body and the Location of the new (or, for a repeated idempotency key, existing) job.

    `events`: the app serves `GET /jobs/{id}/events` (the Flask blueprint does not).
    """
    location = f"{prefix}/jobs/{sent.job_id}"
    body = {
        "job_id": str(sent.job_id),
        "queue": sent.queue,
        "msg_id": sent.msg_id,
        "created": sent.created,
        "status_url": location,
    }
    if events:
        body["events_url"] = f"{location}/events"
    return body, location
