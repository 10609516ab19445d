"""`pgmq-worker web` and `dev` as real processes: they start, serve, stop, and refuse bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import with_dbname
from tests.support.ports import free_port

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "worker.cli"]


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMQ_WORKER_")}
    env.update({"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_FORMAT": "json", **extra})
    return env


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{base} did not become healthy")


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_web_serves_then_stops_cleanly_on_sigterm(db_url: str) -> None:
    """`pgmq-worker web` answers /healthz and POST /jobs, and exits 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen([*CLI, "web", "--port", str(port)], env=env_for(db_url))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        assert httpx.post(f"{base}/jobs/text_stats", json={"text": "hi"}).status_code == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_web_serves_from_several_worker_processes(db_url: str, tmp_path: Path) -> None:
    """PGMQ_WORKER_WEB_WORKERS=2: two app processes start (a `web.started` each), serve, stop on SIGTERM."""
    port = free_port()
    env = env_for(db_url, PGMQ_WORKER_WEB_WORKERS="2")
    with (tmp_path / "web.log").open("wb") as out:
        proc = subprocess.Popen([*CLI, "web", "--port", str(port)], env=env, stderr=out)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, proc)
            deadline = time.monotonic() + 30
            while (tmp_path / "web.log").read_text().count('"web.started"') < 2:
                assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
                time.sleep(0.1)
            for _ in range(10):  # a fresh connection each: either worker may answer
                assert httpx.post(f"{base}/jobs/text_stats", json={"text": "hi"}).status_code == 202
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'text_stats'").fetchone()
    assert row is not None and row[0] == 10


def test_web_refuses_a_short_jwt_secret(db_url: str) -> None:
    """A weak secret is a one-line configuration error, not an open or half-protected server."""
    result = subprocess.run(
        [*CLI, "web", "--port", str(free_port())],
        env=env_for(db_url, SUPABASE_JWT_SECRET="short"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, "invalid setting", "JWT_SECRET", "at least 16 characters")


def test_web_refuses_a_module_that_does_not_import(db_url: str) -> None:
    """A handler module that fails to import is named in the error."""
    result = subprocess.run(
        [*CLI, "web", "--import", "no_such_module_here"],
        env=env_for(db_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, "no_such_module_here")


@pytest.fixture
def unmigrated_db(server_url: str) -> Iterator[str]:
    name = f"pgmqw_bare_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("command", ["web", "run"])
def test_processes_refuse_a_database_that_was_not_migrated(unmigrated_db: str, command: str) -> None:
    """Against a real database with nothing installed, web and run say to run `pgmq-worker migrate`."""
    result = subprocess.run(
        [*CLI, command], env=env_for(unmigrated_db), capture_output=True, text=True, timeout=60, check=False
    )
    one_line_error(result, "pgmq-worker migrate")


def test_dev_reports_a_port_in_use(db_url: str) -> None:
    """When the web process cannot bind, dev exits 1 with one line that says so; no worker keeps running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "dev", "--port", str(port)],
            env=env_for(db_url),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    one_line_error(result, "web process exited", "--port")


def test_dev_runs_web_and_worker_and_ctrl_c_stops_both(db_url: str, tmp_path: Path) -> None:
    """dev prints the URL, a job posted there is run by its worker, and SIGINT stops everything with 0."""
    port = free_port()
    log = tmp_path / "dev.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "dev", "--port", str(port)], env=env_for(db_url), stdout=out)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        job = httpx.post(f"{base}/jobs/text_report", json={"text": "One. Two. Three."}).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}{job['status_url']}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the dev worker did not run the job"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert f"open http://127.0.0.1:{port}/" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
