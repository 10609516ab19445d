"""No-op handlers for bench/throughput.py, so a run measures the worker and not the work.

`pgmq-worker run --import bench.noop_handlers` loads this module in the worker process. The
benchmark talks to it through two environment variables, both optional:

- BENCH_TIMES_FILE: at exit, append a JSON line {"count", "first", "last"} (time.time() of the
  first and the last handler start; one line per worker process), so the benchmark can split
  start-up from work.
- BENCH_LATENCY_FILE: append "msg_id seconds" per message, the seconds from the message's
  enqueued_at (the database server's clock: compare on one machine only) to the handler's start.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from worker import Context, handler

ASYNC_QUEUE = "bench_noop"
SYNC_QUEUE = "bench_noop_sync"
NO_JOB_ROWS_QUEUE = "bench_noop_no_job_rows"


class Recorder:
    """Handler starts: a count, the first and last time, and optionally one latency line each."""

    def __init__(self, times_file: str | None, latency_file: str | None) -> None:
        self._lock = threading.Lock()  # the sync twin runs in the worker's handler threads
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._times_file = times_file
        self._latency_file = Path(latency_file) if latency_file else None

    def started(self, ctx: Context) -> None:
        """Note one handler start."""
        now = time.time()
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = now
            self.last = now
            if self._latency_file is not None:
                # Opened per line (latency runs send a few hundred), so the benchmark reads each
                # line while the worker keeps running.
                with self._latency_file.open("a", encoding="utf-8") as out:
                    out.write(f"{ctx.msg_id} {now - ctx.enqueued_at.timestamp():.6f}\n")

    def flush(self) -> None:
        """Write the summary file (at interpreter exit)."""
        if self._times_file:
            summary = {"count": self.count, "first": self.first, "last": self.last}
            # Appended: with `run --processes N` every worker process adds its own line.
            with Path(self._times_file).open("a", encoding="utf-8") as out:
                out.write(json.dumps(summary) + "\n")


_recorder = Recorder(os.environ.get("BENCH_TIMES_FILE"), os.environ.get("BENCH_LATENCY_FILE"))
atexit.register(_recorder.flush)


@handler(ASYNC_QUEUE)
async def noop(payload: dict[str, Any], ctx: Context) -> None:
    """Do nothing on the event loop."""
    _recorder.started(ctx)


@handler(SYNC_QUEUE)
def noop_sync(payload: dict[str, Any], ctx: Context) -> None:
    """Do nothing in a handler thread (the `def` path)."""
    _recorder.started(ctx)


@handler(NO_JOB_ROWS_QUEUE, job_rows=False)
async def noop_no_job_rows(payload: dict[str, Any], ctx: Context) -> None:
    """Do nothing on the event loop, on a queue without job rows (pgmq alone)."""
    _recorder.started(ctx)
