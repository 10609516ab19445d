"""The shape the runtime keeps: small modules, and no state hidden at module level.

No module in worker/, queues/, db/ or web/ is over 400 lines (split it into modules named for
what they do). No module fills a container at import time or rebinds a module name from a
function (`global`): caches and registries hang off an object the process builds and passes
down, so no test can leak state into the next. A pure function's memo (`functools.lru_cache`
over its arguments) is not state a caller can see, and stays allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("worker", "queues", "db", "web")
MAX_LINES = 400
CONTAINER_CALLS = {"set", "dict", "list", "defaultdict", "Counter", "deque", "OrderedDict"}
CONTAINER_CALLS |= {"WeakKeyDictionary", "WeakValueDictionary", "WeakSet"}


def modules() -> list[Path]:
    """Every Python module of the runtime packages."""
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def hidden_state(source: str) -> list[str]:
    """What a module's source keeps as mutable module state: `name (line)` for each."""
    tree = ast.parse(source)
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            value = node.value
            empty = isinstance(value, ast.List | ast.Set | ast.Dict) and not (
                value.keys if isinstance(value, ast.Dict) else value.elts
            )
            filled_later = isinstance(value, ast.Call) and _name(value.func) in CONTAINER_CALLS
            if empty or filled_later:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found += [f"{ast.unparse(t)} (line {node.lineno})" for t in targets]
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found += [f"global {name} (line {node.lineno})" for name in node.names]
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_runtime_module_is_over_400_lines(path: Path) -> None:
    """A module over the limit holds more than one concept: split it."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_no_runtime_module_keeps_mutable_state() -> None:
    """No container filled at import time, no `global`: state hangs off objects the process builds."""
    found = {
        str(p.relative_to(ROOT)): state
        for p in modules()
        if (state := hidden_state(p.read_text(encoding="utf-8")))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "SEEN: set[str] = set()",
        "_cache = {}",
        "registry = []",
        "from collections import defaultdict\nby_queue = defaultdict(list)",
        "import weakref\nconns = weakref.WeakKeyDictionary()",
        "counter = 0\ndef bump():\n    global counter\n    counter += 1",
    ],
)
def test_the_check_sees_each_kind_of_hidden_state(source: str) -> None:
    """Each form the rule forbids is found (so the check above can fail)."""
    assert hidden_state(source) != []


def test_constants_are_not_state() -> None:
    """Filled literals, frozensets and tuples are constants, not state."""
    source = 'HEADERS = {"a": "b"}\nNAMES = frozenset({"x"})\nORDER = ("a", "b")\nLIMIT = 5'
    assert hidden_state(source) == []
