"""The worker's statement on pgmq_worker.webhook_deliveries: one row per webhook event, per try.

A row is upserted after each try of its event (keyed by the event's webhook-id), so the job page
shows an event being retried as `pending` with its last answer; the job's counter of failed
deliveries goes up with the write of a failed or refused end. The error text comes from
outside (an exception's message, the start of a receiver's answer): it is made one line,
masked of the process's secrets, and storable and bounded by db.storable.safe_text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

from db.redact import process_secrets, redact
from db.storable import escape_controls, safe_text

MAX_ERROR_CHARS: Final = 500  # the column's CHECK (migration 0024)
# Control characters left after whitespace is collapsed (ESC, BEL, DEL, C1): shown as escapes,
# so the page and a terminal show what the receiver sent instead of acting on it.
_READ_CHARS: Final = 8 * MAX_ERROR_CHARS

# Only for a job that still exists: one deleted since its event (pruned, or by hand) has no row
# to hang the delivery on, and the foreign key would refuse it. A delivery that ended failed or
# refused also counts on its job row (webhook_failures, for `pgmq-worker stats`), in the same
# statement: its final result is written once. The job's updated_at is left alone.
RECORD = """
WITH recorded AS (
    INSERT INTO pgmq_worker.webhook_deliveries AS d (
        webhook_id, job_id, event, result, tries, status_code, error, first_tried_at, last_tried_at,
        duration_ms
    )
    SELECT %(webhook_id)s::text, j.id, %(event)s::text, %(result)s::text, %(tries)s::integer,
        %(status_code)s::integer, %(error)s::text, %(first_tried_at)s::timestamptz,
        %(last_tried_at)s::timestamptz, %(duration_ms)s::double precision
    FROM pgmq_worker.jobs AS j WHERE j.id = %(job_id)s::uuid
    ON CONFLICT (webhook_id) DO UPDATE SET result = EXCLUDED.result, tries = EXCLUDED.tries,
        status_code = EXCLUDED.status_code, error = EXCLUDED.error, last_tried_at = EXCLUDED.last_tried_at,
        duration_ms = EXCLUDED.duration_ms
    RETURNING d.job_id
)
UPDATE pgmq_worker.jobs AS j SET webhook_failures = j.webhook_failures + 1, webhook_failed_at = now()
FROM recorded WHERE j.id = recorded.job_id AND %(result)s::text IN ('failed', 'refused')
"""


def error_text(text: str) -> str:
    """`text` as the row keeps it: one line, secrets masked, control characters escaped, bounded."""
    # Only the start is read: what survives the bound comes from it (a huge answer is not walked).
    line = " ".join(redact(text[:_READ_CHARS], process_secrets()).split())  # newlines, tabs, ...
    return safe_text(escape_controls(line), MAX_ERROR_CHARS)


@dataclass(slots=True)
class Delivery:
    """One webhook event's delivery as its row records it, updated by its task as its tries go."""

    webhook_id: str
    job_id: str
    event: str  # the body's type: job.<status>
    first_tried_at: datetime
    last_tried_at: datetime
    result: str = "pending"  # then delivered | failed | refused
    tries: int = 0
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None

    def tried(self, started: datetime, duration_ms: float, status: int | None, error: str | None) -> None:
        """One more try, started at `started`: its answer's status (None: no answer) and error."""
        if not self.tries:
            self.first_tried_at = started
        self.tries += 1
        self.last_tried_at = started
        self.duration_ms = duration_ms
        self.status_code = status
        self.error = None if error is None else error_text(error)


async def record(conn: psycopg.AsyncConnection[Any], delivery: Delivery) -> None:
    """Upsert the delivery's row (nothing when its job is gone); one that failed counts on its job."""
    await conn.execute(
        RECORD,
        {
            "webhook_id": delivery.webhook_id,
            "job_id": delivery.job_id,
            "event": delivery.event,
            "result": delivery.result,
            "tries": delivery.tries,
            "status_code": delivery.status_code,
            "error": delivery.error,
            "first_tried_at": delivery.first_tried_at,
            "last_tried_at": delivery.last_tried_at,
            "duration_ms": delivery.duration_ms,
        },
    )
