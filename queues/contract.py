"""A contract ties a queue name to the pydantic model its messages carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from queues.errors import InvalidPayload
from queues.names import validate_queue_name

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Contract(Generic[M]):
    """A queue name and its payload model; web code imports these without importing the worker."""

    queue: str
    model: type[M]

    def __post_init__(self) -> None:
        validate_queue_name(self.queue)

    def parse(self, body: Any) -> M:
        """Validate a JSON body (or a model instance) into the payload model."""
        if isinstance(body, self.model):
            return body
        if not isinstance(body, dict):
            raise InvalidPayload(
                f"queue {self.queue!r} expects a JSON object for {self.model.__name__}, "
                f"got {type(body).__name__}"
            )
        try:
            return self.model.model_validate(body)
        except ValidationError as exc:
            raise InvalidPayload(
                f"payload for queue {self.queue!r} is invalid: {describe_validation_error(exc)}"
            ) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error on one line: `field: problem; other.field: problem`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return f"{exc.title}: " + "; ".join(parts)


QueueRef = str | Contract[Any]


def queue_of(ref: QueueRef) -> str:
    """The validated queue name of a plain name or a Contract."""
    if isinstance(ref, Contract):
        return ref.queue
    return validate_queue_name(ref)
