"""What running one delivery came to, and how each outcome is recorded."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

from db.redact import process_secrets, redact
from db.storable import safe_text
from worker.store.deliveries import Message


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as plain data, for the log, the job row, webhooks and the dead-letter record.

    Its text is masked of the secrets the process knows (db.redact: a handler may raise with an
    API key, a URL carrying one or DATABASE_URL in its message), then made storable
    (db.storable.safe_text), never refused: an exception's message may hold a NUL or a lone
    surrogate, and the dead letter recording it must still be written.
    """

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """Capture type, message and formatted traceback (chained causes included), secrets masked."""
        secrets = process_secrets()
        return cls(
            type=safe_text(type(exc).__qualname__),
            message=safe_text(redact(str(exc) or type(exc).__qualname__, secrets)),
            traceback=safe_text(redact("".join(traceback.format_exception(exc)), secrets)),
        )

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    def summary(self) -> dict[str, str]:
        """Type and message, without the traceback (what a webhook says)."""
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True, slots=True)
class Handoff:
    """A message `ctx.enqueue` asked for: sent in the transaction that acks this delivery."""

    queue: str
    body: str  # JSON object text (queues.enqueue.encode)
    delay_s: int
    owner: UUID | None


class Handoffs:
    """What `ctx.enqueue` asked for during one attempt; the attempt that made it sends them with its ack."""

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: list[Handoff] = []

    def add(self, handoff: Handoff) -> None:
        """One more message to send if (and only if) this delivery is acked."""
        self._sent.append(handoff)

    @property
    def sent(self) -> tuple[Handoff, ...]:
        """Every handoff so far, in the order asked."""
        return tuple(self._sent)


# Each outcome says what it records, logs and announces: the job status its settle writes, the
# event (and level) of its log line with the fields that line carries, and the fields its webhook
# adds. `announced` False: no webhook (a parent waiting for its children is still running).
# `metric`: its `outcome` label on pgmq_worker_jobs_total (None: not counted, not finished).


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The handler returned: ack (and send its handoffs in the same transaction)."""

    result: Any
    handoffs: tuple[Handoff, ...] = ()  # what ctx.enqueue asked for, sent only with this ack

    status: ClassVar[str] = "succeeded"
    event: ClassVar[str] = "job.succeeded"
    level: ClassVar[str] = "info"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "succeeded"

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {"result": self.result}


@dataclass(frozen=True, slots=True)
class RetryLater:
    """The attempt failed and attempts remain: visible again after `delay` seconds."""

    delay: float
    error: ErrorInfo

    status: ClassVar[str] = "failed"
    event: ClassVar[str] = "job.retry_scheduled"
    level: ClassVar[str] = "warning"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "retried"

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {"delay_s": round(self.delay, 3), "error_type": self.error.type, "error": self.error.message}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {"error": self.error.summary(), "retry_in_s": round(self.delay, 3)}


@dataclass(frozen=True, slots=True)
class Deferred:
    """The provider is rate-limiting: visible again after `delay`, not counted as an attempt."""

    delay: float
    error: ErrorInfo

    status: ClassVar[str] = "queued"
    event: ClassVar[str] = "job.deferred"
    level: ClassVar[str] = "info"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "deferred"

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {"delay_s": round(self.delay, 3), "reason": self.error.message}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {"error": self.error.summary(), "retry_in_s": round(self.delay, 3)}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """No retry can help, or attempts are spent: move to `<queue>_dlq`."""

    reason: str  # "max_attempts" | "invalid_payload" | "invalid_result" | "permanent" | "crashed"
    error: ErrorInfo

    status: ClassVar[str] = "dead"
    event: ClassVar[str] = "job.dead_lettered"
    level: ClassVar[str] = "error"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "dead_lettered"

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {"reason": self.reason, "error_type": self.error.type, "error": self.error.message}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {"error": self.error.summary()}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A parent started or checked on its fan-out: hidden (job still `running`) until its children wake it."""

    job_id: UUID
    fan_out: str

    status: ClassVar[str] = "running"
    event: ClassVar[str] = "job.waiting"
    level: ClassVar[str] = "info"
    announced: ClassVar[bool] = False
    metric: ClassVar[str | None] = None

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {"fan_out": self.fan_out}

    def webhook_fields(self) -> dict[str, Any]:
        """Nothing: a waiting parent sends no webhook."""
        return {}


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The worker stopped or lost the lease mid-attempt: no settle, or a release on shutdown."""

    why: str  # "shutdown" | "lease_lost"

    status: ClassVar[str] = "queued"
    event: ClassVar[str] = "job.released"
    level: ClassVar[str] = "info"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "released"

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {}


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Someone cancelled the job: its message deleted, the job `cancelled`, never retried."""

    reason: str  # "requested" (its handler was stopped) | "before_start" (marked before this read)
    error: ErrorInfo  # what the job row's `error` says: JobCancelled, and when

    status: ClassVar[str] = "cancelled"
    event: ClassVar[str] = "job.cancelled"
    level: ClassVar[str] = "info"
    announced: ClassVar[bool] = True
    metric: ClassVar[str | None] = "cancelled"

    @classmethod
    def of(cls, reason: str) -> Cancelled:
        """The outcome with its job-row error (JobCancelled: what the row's readers see)."""
        message = "cancelled on request" + (" while running" if reason == "requested" else "")
        return cls(reason, ErrorInfo(type="JobCancelled", message=message, traceback=""))

    def log_fields(self) -> dict[str, Any]:
        """What its log line says besides the event and the duration."""
        return {"reason": self.reason}

    def webhook_fields(self) -> dict[str, Any]:
        """What its webhook says besides the job and its status."""
        return {"reason": self.reason}


Outcome = Succeeded | RetryLater | Deferred | DeadLetter | Waiting | Abandoned | Cancelled


def dead_letter_record(message: Message, outcome: DeadLetter, max_attempts: int) -> dict[str, Any]:
    """The body of the dead-letter message: why it is here (pgmq.dead_letter adds the payload)."""
    return {
        "queue": message.queue,
        "msg_id": message.msg_id,
        "attempts": message.read_ct,
        "max_attempts": max_attempts,
        "reason": outcome.reason,
        "error": outcome.error.as_dict(),
        "enqueued_at": message.enqueued_at.isoformat(),
        "dead_lettered_at": datetime.now(UTC).isoformat(),
    }
