"""The queues a process knows by name, with their payload models: what web endpoints accept.

A `Catalog` is an object the process builds at its edge and passes down (no module-level one is
read here): the web process builds it from its handler modules (`load_catalog`), the worker from
its registry (`Catalog.from_registry`), web code that only enqueues from its contracts
(`Catalog([...])` or `declare`). queues/ never imports worker/: the registry hands over plain
`QueueSpec`s, and `@handler` marks each function with its QueueSpec (`mark`), so a process that
imports a handler module validates a payload exactly as the worker will, without the worker.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel

from queues.contract import Contract, QueueRef, queue_of
from queues.errors import QueueError

# Where @handler leaves a function's spec: a QueueSpec, or a worker HandlerSpec with queue_spec().
SPEC_ATTRIBUTE = "__pgmq_handler__"


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


class QueueSource(Protocol):
    """What a catalog can be derived from: the worker's Registry hands out one QueueSpec per handler."""

    def queue_specs(self) -> Iterable[QueueSpec]:
        """The declared queues, as plain data."""
        ...


class Catalog:
    """Queue name -> QueueSpec; a later declaration of the same queue replaces the earlier one."""

    def __init__(self, specs: Iterable[QueueSpec] = ()) -> None:
        self._specs: dict[str, QueueSpec] = {}
        for spec in specs:
            self._specs[spec.queue] = spec

    @classmethod
    def from_registry(cls, source: QueueSource) -> Catalog:
        """The catalog of a registry's queues (worker.registry.Registry.queue_specs)."""
        return cls(source.queue_specs())

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


def mark(fn: Callable[..., Any], spec: QueueSpec) -> None:
    """Attach to a handler function the queue it handles, for `load_catalog` to find."""
    setattr(fn, SPEC_ATTRIBUTE, spec)


def marked(modules: Iterable[ModuleType]) -> list[Any]:
    """What `@handler` left on the functions of `modules` and their submodules (SPEC_ATTRIBUTE).

    The one walk over handler modules: the worker's Registry.from_modules keeps the values that
    are its HandlerSpecs, load_catalog turns each into a QueueSpec.
    """
    found: list[Any] = []
    for each in within(modules):
        for value in list(vars(each).values()):
            mark_value = getattr(value, SPEC_ATTRIBUTE, None) if callable(value) else None
            # A tuple: one function serving several queues (stacked @handler lines).
            for each_mark in mark_value if isinstance(mark_value, tuple) else (mark_value,):
                if each_mark is not None and getattr(each_mark, "fn", value) is value:  # not a copy's
                    found.append(each_mark)
    return found


def within(modules: Iterable[ModuleType]) -> list[ModuleType]:
    """`modules` and their imported submodules: where handler modules leave what they declare."""
    inside: list[ModuleType] = []
    for module in modules:
        prefix = module.__name__ + "."
        inside += [
            m for key, m in list(sys.modules.items()) if key == module.__name__ or key.startswith(prefix)
        ]
    return inside


def declared_in(modules: Iterable[ModuleType]) -> list[QueueSpec]:
    """The queues the marked functions of `modules` (and their submodules) handle, as QueueSpecs."""
    specs = []
    for value in marked(modules):
        if isinstance(value, QueueSpec):
            specs.append(value)
        elif isinstance(spec := getattr(value, "queue_spec", lambda: None)(), QueueSpec):
            specs.append(spec)  # a worker HandlerSpec: its plain-data QueueSpec
    return specs


def load_catalog(names: Sequence[str]) -> Catalog:
    """Import the named handler modules; the catalog of the queues they declare."""
    modules = import_modules(names)
    return Catalog(declared_in(modules))


def import_modules(names: Sequence[str]) -> list[ModuleType]:
    """Import the modules that declare queues (handler modules), by the names the edge was given.

    QueueError names the module and the failing line when one cannot be imported.
    """
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f" ({where.filename}:{where.lineno})" if where else ""
            raise QueueError(
                f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}{at}"
            ) from exc
    return modules
