"""Errors raised when declaring queues and enqueueing.

QueueError
 ├─ InvalidQueueName   not a name pgmq can make tables for
 ├─ UnknownQueue       no such pgmq queue
 ├─ NoJobRows          enqueue into a queue whose handler runs without job rows
 ├─ InvalidPayload     the payload is not a JSON object or fails its contract
 │   └─ PayloadTooLarge  over the size limit
 └─ InvalidArtifact    a job's file with a bad name or content type, or over the size limit
"""

from __future__ import annotations


class QueueError(Exception):
    """A queue or message problem."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidQueueName(QueueError, ValueError):
    """Queue names are 1-43 characters of lowercase letters, digits and underscores."""


class UnknownQueue(QueueError, LookupError):
    """No such queue."""


class NoJobRows(QueueError):
    """The queue's handler runs without job rows (job_rows=False): send with pgmq.send, which makes no job."""


class QueueStorageError(QueueError):
    """A queue cannot be created as asked (a partitioned queue without pg_partman)."""


class InvalidPayload(QueueError, ValueError):
    """The payload is not a JSON object that satisfies the queue's contract."""


class PayloadTooLarge(InvalidPayload):
    """The payload is over the size limit: store large data elsewhere and send its id."""


class InvalidArtifact(QueueError, ValueError):
    """A job artifact needs a plain file name, a content type and at most MAX_ARTIFACT_BYTES of data."""
