"""The one harness for `pgmq-worker run` subprocesses: their argv and environment, the process and its log.

`worker_process` says what to run; `spawned` runs one for a `with` block (stdout and stderr in one
log); `Workers` starts several for one test and reads their JSON log events (the acceptance
scenarios). Only the settings a test gives reach a child: the developer's own PGMQ_WORKER_*,
DATABASE_URL and TEST_DATABASE_URL do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
GRACE_S = 2.0  # PGMQ_WORKER_SHUTDOWN_GRACE when a test gives none; WorkerProcess.stop waits this plus slack


def worker_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("pgmq-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


def child_env(db_url: str, **settings: str) -> dict[str, str]:
    """The environment of a subprocess on `db_url`: JSON logs, a 0.2 s poll, then `settings`.

    The repository leads PYTHONPATH, so `--import tests.support.<module>` resolves from any cwd.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PGMQ_WORKER_") and k not in {"DATABASE_URL", "TEST_DATABASE_URL"}
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(DATABASE_URL=db_url, PGMQ_WORKER_POLL_INTERVAL="0.2", PGMQ_WORKER_LOG_FORMAT="json")
    env.update(settings)
    return env


def worker_process(db_url: str, *imports: str, **settings: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a `pgmq-worker run` subprocess on `db_url` importing `imports`.

    Only the settings given here (PGMQ_WORKER_* keyword names, on top of `child_env`'s) reach it.
    """
    argv = [*worker_command(), "run"]
    for module in imports:
        argv += ["--import", module]
    return argv, child_env(db_url, **settings)


@contextmanager
def spawned(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess writing stdout and stderr to `log`; killed at the end of the block if still up."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process (no chance to release or settle anything) and see it gone."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def log_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """The structured log events (JSON lines) in a log, optionally only those named `name`."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            found.append(event)
    return found


@dataclass
class WorkerProcess:
    """One `pgmq-worker run` subprocess, its stderr kept in a file."""

    proc: subprocess.Popen[bytes]
    stderr_path: Path
    grace_s: float = GRACE_S

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit status, failing the test when it does not exit within `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.pid} still running after {timeout}s\n{self.tail()}")

    def stop(self) -> int:
        """SIGTERM and the exit status (the grace period plus slack to exit)."""
        self.signal(signal.SIGTERM)
        return self.wait(self.grace_s + 10)

    def stderr(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        """The end of its stderr, for failure messages."""
        text = self.stderr().splitlines()[-lines:]
        return f"--- stderr of worker {self.pid} ---\n" + "\n".join(text)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Its structured log events (JSON lines), optionally only those named `name`."""
        return log_events(self.stderr(), name)


@dataclass
class Workers:
    """Starts worker processes for one test and kills whatever is left at its end."""

    db_url: str
    tmp_path: Path
    imports: tuple[str, ...]
    settings: dict[str, str] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, queue: str, *, concurrency: int = 4, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start `pgmq-worker run` for one queue (`env` on top of the settings)."""
        stderr_path = self.tmp_path / f"worker-{len(self.started) + 1}.stderr"
        argv, base = worker_process(self.db_url, *self.imports, **self.settings)
        argv += ["--queue", queue, "--concurrency", str(concurrency)]
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**base, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        grace = float(self.settings.get("PGMQ_WORKER_SHUTDOWN_GRACE", GRACE_S))
        worker = WorkerProcess(proc, stderr_path, grace)
        self.started.append(worker)
        return worker

    def kill_leftovers(self) -> None:
        """SIGKILL every worker this test started that still runs."""
        for worker in self.started:
            if worker.alive():
                worker.proc.kill()
                worker.proc.wait()
