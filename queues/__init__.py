"""Queue declarations, typed message contracts and the enqueue API used by web processes."""

from queues.catalog import Catalog, QueueSpec, load_catalog
from queues.contract import Contract, QueueRef, queue_of
from queues.enqueue import Enqueued, aenqueue, enqueue, enqueue_batch
from queues.errors import InvalidPayload, InvalidQueueName, PayloadTooLarge, QueueError, UnknownQueue
from queues.jobs import Job, aget_job, get_job
from queues.names import dlq_name, validate_queue_name

__all__ = [
    "Catalog",
    "Contract",
    "Enqueued",
    "InvalidPayload",
    "InvalidQueueName",
    "Job",
    "PayloadTooLarge",
    "QueueError",
    "QueueRef",
    "QueueSpec",
    "UnknownQueue",
    "aenqueue",
    "aget_job",
    "dlq_name",
    "enqueue",
    "enqueue_batch",
    "get_job",
    "load_catalog",
    "queue_of",
    "validate_queue_name",
]
