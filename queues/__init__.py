"""Queue declarations, typed message contracts and the enqueue API used by web processes."""

from queues.contract import Contract, QueueRef, queue_of
from queues.enqueue import Enqueued, aenqueue, enqueue, enqueue_batch
from queues.errors import InvalidPayload, InvalidQueueName, QueueError, UnknownQueue
from queues.names import dlq_name, validate_queue_name

__all__ = [
    "Contract",
    "Enqueued",
    "InvalidPayload",
    "InvalidQueueName",
    "QueueError",
    "QueueRef",
    "UnknownQueue",
    "aenqueue",
    "dlq_name",
    "enqueue",
    "enqueue_batch",
    "queue_of",
    "validate_queue_name",
]
