"""Handlers for bench/priority.py: an `urgent` queue whose pickup latency is recorded, a `bulk` backlog.

`pgmq-worker run --import bench.priority_handlers` loads this module in the worker process; the
benchmark sets, per run:

- BENCH_URGENT_PRIORITY: the urgent queue's `@handler(priority=...)` (0: the same as bulk, so the
  worker reads the two in rotation).
- BENCH_BULK_SLEEP_MS: what one bulk job costs (0: a no-op).
- BENCH_LATENCY_FILE: bench/noop_handlers.py's latency lines, for the urgent messages only.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.noop_handlers import Recorder
from worker import Context, handler

URGENT_QUEUE = "bench_urgent"
BULK_QUEUE = "bench_bulk"

_urgent = Recorder(None, os.environ.get("BENCH_LATENCY_FILE"))
_bulk_sleep_s = float(os.environ.get("BENCH_BULK_SLEEP_MS", "0")) / 1000


@handler(URGENT_QUEUE, priority=int(os.environ.get("BENCH_URGENT_PRIORITY", "10")))
async def urgent(payload: dict[str, Any], ctx: Context) -> None:
    """Note when the message started, against when it was sent."""
    _urgent.started(ctx)


@handler(BULK_QUEUE)
async def bulk(payload: dict[str, Any], ctx: Context) -> None:
    """The backlog: nothing, or a short sleep."""
    if _bulk_sleep_s:
        await asyncio.sleep(_bulk_sleep_s)
