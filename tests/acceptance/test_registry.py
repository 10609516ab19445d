"""`pgmq-worker workers --json` sees real `pgmq-worker run` processes: running, draining, stale, gone.

Each worker is a subprocess (tests/support/processes.py) with a 0.3 s registry heartbeat. The
test waits for each state by reading the table (queues.workers, quick), then checks it with the
CLI in another subprocess, as an operator would (a second or so each on a busy machine).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queues import enqueue, pgmq
from queues.workers import list_workers
from tests.support.processes import REPO, Workers, child_env, sigkill, worker_command
from tests.support.registry_handlers import HELD

# Two or three subprocesses each (a worker, the CLI): up to ~20 s on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]
BEAT_S = 0.3


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes with a fast registry heartbeat; none outlives the test."""
    started = Workers(
        db_url,
        tmp_path,
        ("tests.support.registry_handlers",),
        {"PGMQ_WORKER_REGISTRY_HEARTBEAT": str(BEAT_S), "PGMQ_WORKER_SHUTDOWN_GRACE": "20"},
    )
    try:
        yield started
    finally:
        started.kill_leftovers()


def listed(db_url: str) -> list[dict[str, Any]]:
    """`pgmq-worker workers --json`, one object per line."""
    ran = subprocess.run(
        [*worker_command(), "workers", "--json"],
        cwd=REPO,
        env=child_env(db_url),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return [json.loads(line) for line in ran.stdout.splitlines()]


def until(check: Callable[[], Any], within: float = 15.0) -> Any:
    """Poll `check()` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while (value := check()) is None or value is False or value == []:
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s")
        time.sleep(0.1)
    return value


def row_of(db_url: str, pid: int) -> dict[str, Any] | None:
    """The worker's row as `workers --json` would print it (read in-process: quick to poll)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return next((row.as_json() for row in list_workers(conn) if row.pid == pid), None)


def cli_row(db_url: str, pid: int) -> dict[str, Any] | None:
    """The worker's row as the CLI prints it."""
    return next((row for row in listed(db_url) if row["pid"] == pid), None)


def in_state(db_url: str, pid: int, status: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        row = row_of(db_url, pid)
        return row if row is not None and row["status"] == status else None

    return check


def test_a_running_worker_is_listed_and_a_killed_one_becomes_stale(db_url: str, workers: Workers) -> None:
    """A running worker is listed `running` with its queues; SIGKILLed, it cannot remove its row,
    which reads `stale` once three heartbeats are missed."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, HELD)
    worker = workers.start(HELD, concurrency=3)
    until(lambda: row_of(db_url, worker.pid))
    row = cli_row(db_url, worker.pid)
    assert row is not None
    assert (row["status"], row["queues"], row["concurrency"], row["in_flight"]) == ("running", [HELD], 3, 0)
    assert row["heartbeat_s"] == BEAT_S
    assert {"id", "host", "last_seen", "started_at", "processed", "failed", "version"} <= set(row)
    sigkill(worker.proc)
    until(in_state(db_url, worker.pid, "stale"))
    stale = cli_row(db_url, worker.pid)
    assert stale is not None
    assert (stale["id"], stale["status"]) == (row["id"], "stale")
    assert stale["last_seen_s"] > 3 * BEAT_S


def test_sigterm_shows_draining_until_the_job_ends_then_the_row_goes(
    db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """A job is in flight; at SIGTERM the row turns `draining` (still one in flight) and stays so
    while the job runs; once it ends the worker exits 0 and its row is gone."""
    release = tmp_path / "release"
    with psycopg.connect(db_url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, HELD)
        enqueue(conn, HELD, {"release": str(release)})
    worker = workers.start(HELD)
    until(lambda: (r := row_of(db_url, worker.pid)) is not None and r["in_flight"] == 1)
    worker.signal(signal.SIGTERM)
    draining = until(
        lambda: (r := row_of(db_url, worker.pid)) is not None and r["status"] == "draining" and r
    )
    assert draining["in_flight"] == 1
    time.sleep(3 * BEAT_S)  # several heartbeats into the drain: still draining, not stale
    again = row_of(db_url, worker.pid)
    assert again is not None
    assert (again["status"], again["in_flight"]) == ("draining", 1)
    release.touch()
    assert worker.wait(15) == 0, worker.tail()
    assert row_of(db_url, worker.pid) is None
    assert again["processed"] == 0
