"""Periodic jobs across real `pgmq-worker run` processes: one job per tick while workers die and return."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queues import pgmq
from tests.support.helpers import visible_now
from tests.support.processes import REPO, WorkerProcess, Workers, child_env, sigkill, worker_command
from tests.support.schedule_handlers import EVERY

pytestmark = pytest.mark.slow
HANDLERS = "tests.support.schedule_handlers"


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test's database; none outlives the test."""
    started = Workers(db_url, tmp_path, (HANDLERS,), {"PGMQ_WORKER_SHUTDOWN_GRACE": "2"})
    try:
        yield started
    finally:
        started.kill_leftovers()


def wait_for_ticks(conn: psycopg.Connection[Any], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pgmq_worker.schedule_ticks WHERE schedule = 'every-second'"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"fewer than {count} ticks sent within {timeout}s")


def wait_until_started(proc: WorkerProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not proc.events("worker.started"):
        if time.monotonic() > deadline or not proc.alive():
            pytest.fail(f"worker {proc.pid} did not start\n{proc.tail()}")
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_three_workers_one_killed_and_restarted_run_one_job_per_tick(
    conn: psycopg.Connection[Any], db_url: str, workers: Workers
) -> None:
    """Every second's tick runs exactly once, with ctx.scheduled_at, and none is lost meanwhile."""
    # Made first: three workers creating one new queue at once race in pgmq.create (1.4.4, 1.5.1).
    pgmq.ensure_queue(conn, EVERY)
    procs = [workers.start(EVERY) for _ in range(3)]
    for proc in procs:
        wait_until_started(proc)
    wait_for_ticks(conn, 3, timeout=30)
    time.sleep(2)
    sigkill(procs[1].proc)
    killed_at = datetime.now(UTC)
    time.sleep(3)
    procs.append(workers.start(EVERY))  # the killed one, back
    wait_until_started(procs[-1])
    time.sleep(3)
    for proc in (procs[0], procs[2], procs[3]):
        assert proc.stop() == 0, proc.tail()

    ticks = [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT tick, msg_id, job_id FROM pgmq_worker.schedule_ticks WHERE schedule = 'every-second'"
            " ORDER BY tick"
        ).fetchall()
    ]
    instants = [t for t, _, _ in ticks]
    assert len(instants) >= 8, instants
    # No tick lost while a worker ran (one always did): consecutive seconds, first to last.
    gaps = [(a, b) for a, b in itertools.pairwise(instants) if b - a != timedelta(seconds=1)]
    assert gaps == []
    assert instants[0] < killed_at < instants[-1]
    assert all(msg_id is not None and job_id is not None for _, msg_id, job_id in ticks)
    senders = [p for p in procs if p.events("schedule.sent")]
    assert len(senders) >= 2  # the ticks were contended, not one worker's alone
    sent_in_logs = sorted(e["tick"] for p in procs for e in p.events("schedule.sent"))
    assert len(sent_in_logs) == len(set(sent_in_logs))  # no tick sent by two workers

    # Drain what the stop left: the SIGKILLed worker's delivery, if it held one, and the last ticks.
    visible_now(conn, EVERY)
    argv = [*worker_command(), "run", "--import", HANDLERS, "--burst"]
    drained = subprocess.run(
        argv, cwd=REPO, env=child_env(db_url), capture_output=True, timeout=40, check=False
    )
    assert drained.returncode == 0, drained.stderr.decode()[-2000:]

    jobs = conn.execute(
        "SELECT msg_id, status, result FROM pgmq_worker.jobs WHERE queue = %s ORDER BY msg_id", (EVERY,)
    ).fetchall()
    assert len(jobs) == len(ticks)  # one job per tick, and no message without a tick
    by_msg = {msg_id: tick for tick, msg_id, _ in ticks}
    for msg_id, status, result in jobs:
        assert status == "succeeded", (msg_id, status)
        assert datetime.fromisoformat(result["scheduled_at"]) == by_msg[msg_id]
        assert result["from"] == "schedule"

    listed = subprocess.run(
        [*worker_command(), "schedules", "--import", HANDLERS, "--json"],
        cwd=REPO,
        env=child_env(db_url),
        capture_output=True,
        timeout=30,
        check=True,
    )
    [row] = [json.loads(line) for line in listed.stdout.decode().splitlines() if line.startswith("{")]
    assert row["name"] == "every-second" and row["queue"] == EVERY and row["cron"] == "* * * * * *"
    assert datetime.fromisoformat(row["last_tick"]) == instants[-1]
    assert datetime.fromisoformat(row["next_tick"]) > instants[-1]
