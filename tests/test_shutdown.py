"""A stopping worker exits promptly even when a `def` handler's thread cannot be stopped."""

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
from tests.helpers import rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sigterm_with_a_stuck_sync_handler_exits_0_and_releases_its_message(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Past the grace the message is visible again at once, and the process exits 0 promptly."""
    started = tmp_path / "started"
    pgmq.ensure_queue(conn, "stuck_sync")
    pgmq.send(conn, "stuck_sync", {"started": str(started)})
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PYTHONPATH": str(ROOT),
        "PGMQ_WORKER_SHUTDOWN_GRACE": "0.5",
        "PGMQ_WORKER_POLL_INTERVAL": "0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--import", "tests.stuck_handlers"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the handler never started"
        sent_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - sent_term < 10
        assert "worker.exit_with_running_threads" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [row] = rows(conn, "stuck_sync")
    assert row["visible"]
    assert row["read_ct"] == 1
