"""Dependencies flow one way: db imports none of ours, queues only db, worker never handlers or web."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
OURS = {"db", "queues", "worker", "handlers", "web"}
ALLOWED = {
    "db": set(),
    "queues": {"db"},
    "worker": {"db", "queues"},
    "handlers": {"db", "queues", "worker"},
    "web": {"db", "queues"},  # the web process never imports the worker; `dev` runs it as `python -m web`
}


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages a module imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    """Each package imports only the packages below it in the dependency order."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package] - {package})
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
