"""The catalog is an object the process builds at its edge, never module state read behind its back."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from queues import Contract, QueueError, load_catalog
from queues.catalog import Catalog, QueueSpec, declared_in, mark


class Page(BaseModel):
    page: int


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A handler package whose functions are marked the way `@handler` marks them, one in a submodule."""
    root = tmp_path / "marked_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from marked_pkg import inner\n\n__all__ = ['inner']\n")
    (root / "inner.py").write_text(
        textwrap.dedent(
            """
            from queues.catalog import QueueSpec, mark

            def ocr(payload, ctx):
                '''Read the page.'''

            mark(ocr, QueueSpec("marked_ocr", None, "Read the page.", ("read",), True))

            def plain(payload, ctx):
                pass

            mark(plain, QueueSpec("marked_plain", None, job_rows=False))

            class Handler:  # what the worker's @handler leaves: its own spec, with queue_spec()
                def __init__(self, fn):
                    self.fn = fn

                def queue_spec(self):
                    return QueueSpec("marked_by_worker", None)

            def work(payload, ctx):
                pass

            work.__pgmq_handler__ = Handler(work)

            def alias(payload, ctx):
                pass

            alias.__pgmq_handler__ = Handler(work)  # another function's spec: not this one's handler
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "marked_pkg"
    for name in [m for m in sys.modules if m == "marked_pkg" or m.startswith("marked_pkg.")]:
        del sys.modules[name]


def test_load_catalog_finds_the_queues_a_package_and_its_submodules_declare(package: str) -> None:
    """`python -m web --import pkg`: the marked handlers of pkg and of the pkg.inner it imports."""
    catalog = load_catalog([package])
    ocr, plain = catalog.get("marked_ocr"), catalog.get("marked_plain")
    assert ocr is not None and ocr.summary == "Read the page." and ocr.steps == ("read",)
    assert plain is not None and plain.job_rows is False
    assert catalog.get("marked_by_worker") is not None
    found = sorted(s.queue for s in declared_in([sys.modules[package]]))
    assert found == ["marked_by_worker", "marked_ocr", "marked_plain"]  # the alias's copy is not counted


def test_declared_in_reads_only_the_modules_it_is_given(package: str) -> None:
    """Another module's handlers are not part of this catalog (no process-wide list to leak between tests)."""
    assert declared_in([sys.modules[__name__]]) == []


def test_catalogs_are_independent_objects() -> None:
    """Declaring into one catalog leaves every other catalog as it was."""
    one, other = Catalog(), Catalog([QueueSpec("kept", None)])
    one.declare(Contract("only_in_one", Page))
    assert one.get("only_in_one") is not None
    assert other.get("only_in_one") is None
    assert [s.queue for s in other] == ["kept"]


def test_a_catalog_is_derived_from_a_registry_through_plain_specs() -> None:
    """Catalog.from_registry takes anything that hands out QueueSpecs (the worker's Registry does)."""

    class Source:
        def queue_specs(self) -> Iterable[QueueSpec]:
            return [QueueSpec("b", Page), QueueSpec("a", None, job_rows=False)]

    catalog = Catalog.from_registry(Source())
    assert [s.queue for s in catalog] == ["a", "b"]
    spec = catalog.get("b")
    assert spec is not None and spec.ref == Contract("b", Page)


def test_marking_attaches_plain_data_only() -> None:
    """`mark` leaves the function callable as it was, with its QueueSpec beside it."""

    def fn(payload: object, ctx: object) -> str:
        return "ran"

    mark(fn, QueueSpec("q", None))
    assert fn(None, None) == "ran"
    assert declared_in([]) == []


def test_a_module_that_cannot_be_imported_is_a_queue_error() -> None:
    """The edge's error names the module."""
    with pytest.raises(QueueError, match="no_such_handler_module"):
        load_catalog(["no_such_handler_module"])
