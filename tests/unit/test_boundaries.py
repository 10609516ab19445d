"""Dependencies flow one way: db imports none of ours, queues only db, worker never handlers or web.

Two kinds of edge count: `import` statements, and imports by string (a literal handed to
`importlib.import_module`, `import_module` or `__import__`, or a module-level `*_MODULES` or
`*_IMPORTS` constant naming modules to import), which the first kind cannot see. Starting a
program (`python -m web`) is not an import.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
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
IMPORT_FUNCTIONS = {"import_module", "__import__"}
# The two process edges name the handler modules to load when no --import is given (DESIGN.md:
# "the CLI imports handler modules by name"): a default the user overrides, not a dependency.
EDGES = {"worker/commands/edge.py": {"handlers"}, "web/settings.py": {"handlers"}}


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


def _strings(node: ast.AST) -> list[str]:
    """The string literals of an expression (a constant, or a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element)]
    return []


def string_imported_packages(path: Path) -> set[str]:
    """Our top-level packages a module imports by name: import_module("x"), X_MODULES = ("x",)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in IMPORT_FUNCTIONS:
                names += _strings(node.args[0])
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id.endswith(("MODULES", "IMPORTS")) for t in targets):
            names += _strings(value)
    return {name.split(".")[0] for name in names} & OURS


def offenders(
    root: Path, package: str, find: Callable[[Path], set[str]] = imported_packages
) -> dict[str, list[str]]:
    """Each module of `package` under `root` that depends on a package the design does not allow."""
    found = {
        str(rel): sorted(find(path) - ALLOWED[package] - {package} - EDGES.get(str(rel), set()))
        for path in sorted((root / package).rglob("*.py"))
        if (rel := path.relative_to(root))
    }
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    """Each package imports only the packages below it in the dependency order."""
    assert offenders(ROOT, package) == {}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_nothing_by_name_that_the_design_forbids(package: str) -> None:
    """No module reaches past the order by naming a module to import (import_module, *_MODULES)."""
    assert offenders(ROOT, package, string_imported_packages) == {}


def test_the_check_sees_each_kind_of_bad_import(tmp_path: Path) -> None:
    """A deliberate bad import of each kind is found; allowed ones and a program's name are not."""
    bad = {
        "db/a.py": "import queues\n",
        "queues/b.py": "from worker.registry import Registry\n",
        "queues/c.py": "import importlib\nimportlib.import_module('handlers.text')\n",
        "queues/d.py": "DEFAULT_MODULES = ('handlers',)\n",
        "worker/e.py": "import web.app as app\n",
        "worker/f.py": "__import__('handlers')\n",
        "worker/h.py": "DEFAULT_IMPORTS = ('handlers',)\n",
        "web/g.py": "from worker import handler\n",
    }
    fine = {
        "queues/ok.py": "from db.connect import Target\nEVENT = 'worker.started'\n",
        "worker/ok.py": "import queues\nWEB_MODULE = 'web'  # `python -m web`: a program, not an import\n",
        "handlers/ok.py": "from worker import handler\nfrom queues import Contract\n",
        "web/ok.py": "from . import app\nfrom queues import enqueue\n",
    }
    for name, text in {**bad, **fine}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    found = {
        kind: {k: v for package in ALLOWED for k, v in offenders(tmp_path, package, find).items()}
        for kind, find in (("import", imported_packages), ("string", string_imported_packages))
    }
    assert found == {
        "import": {
            "db/a.py": ["queues"],
            "queues/b.py": ["worker"],
            "worker/e.py": ["web"],
            "web/g.py": ["worker"],
        },
        "string": {
            "queues/c.py": ["handlers"],
            "queues/d.py": ["handlers"],
            "worker/f.py": ["handlers"],
            "worker/h.py": ["handlers"],
        },
    }
