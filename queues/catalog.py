"""The queues this process knows by name, with their payload models: what web endpoints accept.

`@handler` declares its queue here, so a web process that imports the handler modules validates
a payload exactly as the worker will, without importing the worker itself. Web code that only
enqueues declares its contracts directly with `catalog.declare(Contract(...))`.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from queues.contract import Contract, QueueRef, queue_of
from queues.errors import QueueError

DEFAULT_MODULES = ("handlers",)  # the project's reference handlers


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A declared queue: its name, payload model (None: any JSON object), summary and step names.

    job_rows False: its handler keeps no `pgmq_worker.jobs` rows, so `enqueue` refuses it.
    """

    queue: str
    model: type[BaseModel] | None
    summary: str = ""
    steps: tuple[str, ...] = ()
    job_rows: bool = True

    @property
    def ref(self) -> QueueRef:
        """What `enqueue` takes: the Contract when there is a model, else the name."""
        return Contract(self.queue, self.model) if self.model is not None else self.queue

    def example(self) -> dict[str, Any]:
        """The first example in the model's JSON schema (`json_schema_extra={"examples": [...]}`)."""
        if self.model is None:
            return {}
        examples = self.model.model_json_schema().get("examples") or [{}]
        first = examples[0]
        return dict(first) if isinstance(first, dict) else {}

    def describe(self) -> dict[str, Any]:
        """A JSON description for clients: name, summary, schema and example payload."""
        return {
            "queue": self.queue,
            "summary": self.summary,
            "schema": self.model.model_json_schema() if self.model is not None else {"type": "object"},
            "example": self.example(),
            "steps": list(self.steps),
        }


class Catalog:
    """Queue name -> QueueSpec; a later declaration of the same queue replaces the earlier one."""

    def __init__(self) -> None:
        self._specs: dict[str, QueueSpec] = {}

    def declare(
        self, ref: QueueRef, *, summary: str = "", steps: Sequence[str] = (), job_rows: bool = True
    ) -> QueueSpec:
        """Declare a queue (a name, or a Contract with its model), with its handler's step names."""
        model = ref.model if isinstance(ref, Contract) else None
        spec = QueueSpec(queue_of(ref), model, summary, tuple(steps), job_rows)
        self._specs[spec.queue] = spec
        return spec

    def get(self, queue: str) -> QueueSpec | None:
        """The declared queue, or None."""
        return self._specs.get(queue)

    def __iter__(self) -> Iterator[QueueSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.queue))

    def __len__(self) -> int:
        return len(self._specs)

    def clear(self) -> None:
        """Forget every declaration (tests)."""
        self._specs.clear()


catalog = Catalog()  # the one `@handler` fills and the web process reads


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that declare queues (handler modules: `@handler` declares as it registers).

    QueueError names the module and the failing line when one cannot be imported.
    """
    for name in names or DEFAULT_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f" ({where.filename}:{where.lineno})" if where else ""
            raise QueueError(
                f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}{at}"
            ) from exc
