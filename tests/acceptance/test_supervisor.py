"""`pgmq-worker run --processes N`: workers share the queue, a killed one is replaced, signals pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queues import pgmq
from tests.support.acceptance_handlers import JOBS
from tests.support.helpers import rows
from tests.support.processes import log_events, worker_process
from worker.supervisor import Supervisor

pytestmark = pytest.mark.slow


def start(db_url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv, env = worker_process(db_url, "tests.support.acceptance_handlers")
    with log.open("wb") as out:
        return subprocess.Popen([*argv, "--queue", JOBS, *extra], env=env, stderr=out)


def events(log: Path, name: str) -> list[dict[str, Any]]:
    return log_events(log.read_text(), name)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def marks(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def test_processes_share_the_work_and_a_killed_one_is_replaced(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Two workers run jobs at once; SIGKILL one and a new one takes its place; SIGTERM stops all with 0."""
    log, marker = tmp_path / "supervisor.log", tmp_path / "marks"
    pgmq.ensure_queue(conn, JOBS)
    # Two slow jobs with concurrency 1 each: only two processes can run both at once.
    pgmq.send_batch(conn, JOBS, [{"marker": str(marker), "key": k, "sleeps": [1.5]} for k in ("a", "b")])
    proc = start(db_url, log, "--processes", "2", "--concurrency", "1")
    try:
        wait_until(lambda: events(log, "supervisor.started"), 60, "the supervisor did not start")
        pids = events(log, "supervisor.started")[0]["pids"]
        assert len(set(pids)) == 2
        wait_until(
            lambda: sum(m.startswith("start") for m in marks(marker)) == 2, 30, "both jobs should start"
        )
        assert not any(m.startswith("done") for m in marks(marker)), "the jobs ran one after the other"
        wait_until(
            lambda: sum(m.startswith("done") for m in marks(marker)) == 2, 30, "both jobs should finish"
        )

        os.kill(pids[0], signal.SIGKILL)
        wait_until(
            lambda: events(log, "supervisor.worker_restarted"), 30, "the killed worker was not replaced"
        )
        [restarted] = events(log, "supervisor.worker_restarted")
        assert restarted["pid"] not in pids
        pgmq.send(conn, JOBS, {"marker": str(marker), "key": "c"})
        wait_until(lambda: "done c 1" in marks(marker), 30, "the replacement fleet should keep working")
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    assert status == 0, log.read_text()[-3000:]
    assert events(log, "supervisor.stopped")[0]["failed"] is False
    assert rows(conn, JOBS) == []
    for pid in [*pids, restarted["pid"]]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_burst_with_processes_exits_when_every_worker_is_done(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """--burst --processes 2 drains the queue and exits 0 once both workers have exited 0."""
    log, marker = tmp_path / "supervisor.log", tmp_path / "marks"
    pgmq.ensure_queue(conn, JOBS)
    pgmq.send_batch(conn, JOBS, [{"marker": str(marker), "key": i} for i in range(20)])
    proc = start(db_url, log, "--processes", "2", "--burst")
    assert proc.wait(90) == 0, log.read_text()[-3000:]
    assert rows(conn, JOBS) == []
    assert sorted(m for m in marks(marker) if m.startswith("done")) == sorted(
        f"done {i} 1" for i in range(20)
    )
    assert not events(log, "supervisor.worker_exited")


def test_the_supervisor_wakes_when_a_worker_exits_not_at_its_next_poll(tmp_path: Path) -> None:
    """A worker that dies is restarted, and a burst ends, as the worker exits (SIGCHLD), not a poll later.

    The poll interval here is 60 s: polling alone would take two of them (the failed first run, then
    the run that exits 0).
    """
    tries = tmp_path / "tries"
    # Fails on its first run, succeeds on its second: one restart, then the burst is done.
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) if p.exists() else 0; "
        "p.write_text('x' * (n + 1)); sys.exit(3 if n == 0 else 0)"
    )
    supervisor = Supervisor(
        [sys.executable, "-c", code, str(tries)], 1, env=dict(os.environ), burst=True, poll_s=60
    )
    started = time.monotonic()
    assert supervisor.run() == 0
    assert time.monotonic() - started < 30, "the supervisor waited for its poll interval"
    assert tries.read_text() == "xx"
    assert len(supervisor.slots[0].pids) == 2
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1, "the wake-up fd was left installed"
