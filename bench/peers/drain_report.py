"""What every peer driver shares: its command line, the clock its handler ticks, the JSON it prints.

The drivers run under the peers' own virtualenv (bench/.peers-venv), so this module uses the
standard library only and imports nothing of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from importlib.metadata import version
from typing import Any


def parse_args(description: str) -> argparse.Namespace:
    """--dsn (a database of the peer's own, empty) and --jobs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dsn", required=True, help="an empty database for this peer alone")
    parser.add_argument("--jobs", type=int, default=50_000, help="no-op jobs to enqueue, then drain")
    return parser.parse_args()


class DrainClock:
    """Handler starts: how many, the first and the last, and an event once all were seen."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.all_started = asyncio.Event()  # create inside the running loop

    def tick(self) -> None:
        """Note one handler start (handlers run on the event loop: no lock needed)."""
        now = time.perf_counter()
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now
        if self.count >= self.jobs:
            self.all_started.set()


def report(
    package: str,
    settings: dict[str, Any],
    clock: DrainClock,
    *,
    enqueue_s: float,
    worker_started: float,
    drained: float,
    left: int,
) -> None:
    """Print one JSON object: the drain rate from the first handler start to the queue drained."""
    drain_s = drained - clock.first if clock.first is not None else None
    print(
        json.dumps(
            {
                "package": package,
                "version": version(package),
                "python": sys.version.split()[0],
                "settings": settings,
                "jobs": clock.jobs,
                "handled": clock.count,
                "left": left,
                "enqueue_s": enqueue_s,
                "drain_s": drain_s,
                "worker_s": drained - worker_started,
                "jobs_per_s": clock.jobs / drain_s if drain_s else None,
            }
        )
    )
