"""Queue names: what pgmq accepts, and the dead-letter queue that goes with each."""

from __future__ import annotations

import re

from queues.errors import InvalidQueueName

DLQ_SUFFIX = "_dlq"
# pgmq allows 47 characters (its partition template prefix needs the rest of 63); we keep room
# for the "_dlq" suffix so every queue can have its dead-letter queue.
MAX_LENGTH = 47 - len(DLQ_SUFFIX)
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def validate_queue_name(name: str) -> str:
    """Return the name if pgmq and we can use it, else raise InvalidQueueName saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidQueueName("a queue name must be a non-empty string")
    if len(name) > MAX_LENGTH:
        raise InvalidQueueName(f"queue name {name!r} is longer than {MAX_LENGTH} characters")
    if not _NAME.match(name):
        raise InvalidQueueName(
            f"queue name {name!r} must be lowercase letters, digits and underscores, "
            "not starting with a digit"
        )
    return name


def dlq_name(queue: str) -> str:
    """The dead-letter queue for a queue: `<queue>_dlq`, itself a real pgmq queue."""
    return queue + DLQ_SUFFIX


def is_dlq(queue: str) -> bool:
    """Whether this queue is some queue's dead-letter queue."""
    return queue.endswith(DLQ_SUFFIX)


def table_name(queue: str) -> str:
    """The pgmq table that holds a queue's live messages (dead-letter queues included)."""
    if not _NAME.match(queue) or len(queue) > MAX_LENGTH + len(DLQ_SUFFIX):
        raise InvalidQueueName(f"{queue!r} is not a pgmq queue name")
    return "q_" + queue
