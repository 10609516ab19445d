"""The worker's event loop: uvloop where it is installed (uvicorn's `--loop auto`), else asyncio's.

uvloop comes with `uvicorn[standard]` on Linux and macOS. On the 2-core bench machine it took
~0.3 ms off the pickup p50 (3.0-3.4 ms against 3.3-3.6, three interleaved pairs); drain
throughput, bound by the database, did not move. PGMQ_WORKER_EVENT_LOOP=asyncio turns it off.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoop", "loop_name", "run", "uvloop_installed"]

T = TypeVar("T")
EventLoop = Literal["auto", "asyncio", "uvloop"]


def uvloop_installed() -> bool:
    """Whether `import uvloop` would work here."""
    return importlib.util.find_spec("uvloop") is not None


def _factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if kind == "asyncio" or (kind == "auto" and not uvloop_installed()):
        return None
    import uvloop  # noqa: PLC0415  (optional: only where it is installed and wanted)

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoop) -> T:
    """asyncio.run(main) on the chosen loop."""
    with asyncio.Runner(loop_factory=_factory(kind)) as runner:
        return runner.run(main)


def loop_name() -> str:
    """Which loop runs this code, "uvloop" or "asyncio" (the worker.started log line says it)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
