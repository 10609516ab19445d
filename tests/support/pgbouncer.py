"""PgBouncer in transaction mode on a loopback port, in front of the test server (pytest plugin).

`pgbouncer` (session) starts Debian's `pgbouncer` with auth_type=any and a `*` fallback database
line pointing at the session's server (a unix socket directory for the embedded server, TCP for
TEST_DATABASE_URL); `pgbouncer_url` is the test's own database reached through it. Without the
binary the tests that ask for it are skipped, unless PGMQ_WORKER_REQUIRE_PGBOUNCER=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.support.ports import free_port

REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_PGBOUNCER"
DEBIAN_BINARY = "/usr/sbin/pgbouncer"  # /usr/sbin is often missing from a non-root PATH
READY_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Bouncer:
    """A running PgBouncer: where it listens and where it logs."""

    host: str
    port: int
    log_path: Path

    def url_for(self, db_url: str) -> str:
        """The same database (and user) as `db_url`, reached through the bouncer."""
        params = conninfo.conninfo_to_dict(db_url)
        params.update(host=self.host, port=str(self.port))
        return conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})

    def log(self) -> str:
        """Everything PgBouncer has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, on PATH or where Debian installs it."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None


def _value(text: str) -> str:
    """A [databases] connection-string value, in the single quotes PgBouncer's parser takes."""
    if "'" in text or "\\" in text:
        pytest.fail(f"cannot pass {text!r} to pgbouncer: quotes and backslashes are not supported here")
    return f"'{text}'"


def _run_as(server_host: str) -> str | None:
    """PgBouncer refuses to run as root: pick a user who can reach the server's socket."""
    if os.geteuid() != 0:
        return None
    if server_host.startswith("/"):
        # The embedded server's socket lives in its PGDATA (mode 0700): only its owner gets in.
        owner = pwd.getpwuid(Path(server_host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    for candidate in ("postgres", "nobody"):
        try:
            pwd.getpwnam(candidate)
        except KeyError:
            continue
        return candidate
    pytest.fail("running as root and found no user for pgbouncer to run as (tried postgres, nobody)")


def _config(server_url: str, port: int) -> tuple[str, str]:
    """The ini text for a transaction-mode bouncer in front of `server_url`, and the server host."""
    server = conninfo.conninfo_to_dict(server_url)
    host = str(server.get("host") or "127.0.0.1")
    parts = {
        "host": host,
        "port": str(server.get("port") or 5432),
        "user": str(server.get("user") or "postgres"),
    }
    if server.get("password"):
        parts["password"] = str(server["password"])
    fallback = " ".join(f"{k}={_value(v)}" for k, v in parts.items())
    ini = f"""\
[databases]
* = {fallback}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
; clients are trusted (loopback, tests); the server login uses the [databases] user
auth_type = any
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
"""
    return ini, host


def _wait_ready(proc: subprocess.Popen[bytes], bouncer: Bouncer, server_url: str) -> None:
    probe = bouncer.url_for(server_url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pgbouncer exited with status {proc.returncode}:\n{bouncer.log()}")
        try:
            with psycopg.connect(probe, autocommit=True, prepare_threshold=None, connect_timeout=2) as c:
                c.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
            continue
        return
    pytest.fail(f"pgbouncer did not answer within {READY_TIMEOUT_S}s ({last}):\n{bouncer.log()}")


@pytest.fixture(scope="session")
def pgbouncer(server_url: str) -> Iterator[Bouncer]:
    """A PgBouncer in transaction pool mode on a free loopback port, for the whole session."""
    binary = pgbouncer_binary()
    if binary is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    port = free_port()
    ini, server_host = _config(server_url, port)
    user = _run_as(server_host)
    workdir = Path(tempfile.mkdtemp(prefix="pgmqw-pgbouncer-"))
    config = workdir / "pgbouncer.ini"
    config.write_text(ini)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (workdir, config):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    bouncer = Bouncer("127.0.0.1", port, workdir / "pgbouncer.log")
    argv = [binary, *(["-u", user] if user else []), str(config)]
    with bouncer.log_path.open("wb") as log:
        # Foreground, logging to stderr: it stops with us and its log is ours to show.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        _wait_ready(proc, bouncer, server_url)
        yield bouncer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown; SIGINT would wait for clients
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pgbouncer_url(pgbouncer: Bouncer, db_url: str) -> str:
    """The test's database, reached through the transaction-mode PgBouncer."""
    return pgbouncer.url_for(db_url)
