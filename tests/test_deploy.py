"""Deploy material: fly.toml, Dockerfile and Procfile agree, and the Procfile's commands start."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
# Top-level keys of Fly's app configuration reference (https://fly.io/docs/reference/configuration/).
FLY_TOP_LEVEL = {
    "app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command",
    "build", "deploy", "env", "http_service", "services", "checks", "processes", "vm", "mounts",
    "metrics", "statics", "files", "experimental", "restart",
}  # fmt: skip


def fly() -> dict[str, object]:
    return tomllib.loads((ROOT / "fly.toml").read_text(encoding="utf-8"))


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def seconds(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+)s", str(value))
    assert match, f"kill_timeout {value!r}"
    return float(match.group(1))


def test_fly_toml_has_a_web_and_a_worker_group_and_documented_keys() -> None:
    """Two process groups; HTTP and its health check on web only, on the port web listens on."""
    config = fly()
    assert set(config) <= FLY_TOP_LEVEL, set(config) - FLY_TOP_LEVEL
    processes = config["processes"]
    assert isinstance(processes, dict) and set(processes) == {"web", "worker"}
    service = config["http_service"]
    assert isinstance(service, dict)
    assert service["processes"] == ["web"]
    assert f"--port {service['internal_port']}" in processes["web"]
    assert "--host 0.0.0.0" in processes["web"]
    assert [check["path"] for check in service["checks"]] == ["/healthz"]
    assert config["deploy"] == {"release_command": "pgmq-worker migrate"}
    assert {p for vm in config["vm"] for p in vm["processes"]} == {"web", "worker"}  # type: ignore[attr-defined]


def test_fly_gives_the_worker_longer_than_its_shutdown_grace() -> None:
    """Fly sends SIGTERM and waits kill_timeout: it must exceed the worker's grace (and Fly's 300 s cap)."""
    config = fly()
    assert config["kill_signal"] == "SIGTERM"
    grace = WorkerSettings().shutdown_grace.total_seconds()
    assert grace + 5 <= seconds(config["kill_timeout"]) <= 300


def test_the_dockerfile_runs_unprivileged_in_exec_form() -> None:
    """python:3.11-slim, a non-root USER before the command, and a JSON-array CMD (signals reach it)."""
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image.startswith("python:3.11-slim") for image in froms)
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    [cmd] = [i for i, line in enumerate(lines) if line.startswith("CMD ")]
    assert users and users[-1] < cmd and lines[users[-1]].split()[1] not in {"root", "0"}
    assert json.loads(lines[cmd][len("CMD ") :]) == ["pgmq-worker", "run"]
    assert (ROOT / fly()["build"]["dockerfile"]).is_file()  # type: ignore[index]


def test_procfile_and_fly_run_the_same_commands() -> None:
    """The Procfile's web and worker lines run the same subcommands as fly.toml's groups."""
    processes = fly()["processes"]
    lines = procfile()
    assert set(lines) == {"web", "worker"}
    for name, command in lines.items():
        assert shlex.split(command)[:2] == shlex.split(processes[name])[:2]  # type: ignore[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["web", "worker"])
def test_procfile_commands_start_and_stop_cleanly(name: str, db_url: str, tmp_path: Path) -> None:
    """Each Procfile line, run by a shell as a process manager would, starts and exits 0 on SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMQ_WORKER_")}
    env.update({"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_FORMAT": "json", "PORT": str(port)})
    # As a deploy sets it: the web line binds 0.0.0.0, where it refuses to serve without a secret.
    env["SUPABASE_JWT_SECRET"] = "deploy-test-secret-of-32-characters!"
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        # exec: the shell becomes the command, so the signal reaches it (as with honcho/foreman).
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {procfile()[name]}"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while not ready(name, port, log):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{name} did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    assert status == 0, log.read_text()[-2000:]


def ready(name: str, port: int, log: Path) -> bool:
    if name == "worker":
        return '"worker.started"' in log.read_text()
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
