"""The other Postgres queues, installed from the package index into a venv of their own and run.

Each peer is pinned, installed with pip into bench/.peers-venv (created with `python3.11 -m venv`
on first use; gitignored, never vendored) and driven by a script in bench/peers/ run with that
venv's python, on a fresh, empty database of its own. A peer that fails to install or run comes
back as a result with `not_run` set to the reason: it is reported, never dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from psycopg import conninfo

from bench.throughput import Server, fresh_database

BENCH_DIR = Path(__file__).resolve().parent
PEERS_VENV = BENCH_DIR / ".peers-venv"
DRIVERS = BENCH_DIR / "peers"
INSTALL_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Peer:
    """A queue library to compare with: what to install and which driver drains with it."""

    name: str
    settings: str  # as shown in the table
    requirements: tuple[str, ...]
    driver: str  # a file in bench/peers/
    bulk: str  # how the driver enqueues the jobs it drains, timed as the peer's bulk enqueue


PEERS = (
    Peer(
        "PgQueuer",
        "asyncpg, 5 consumers, batch 10",
        ("pgqueuer==1.6.0", "asyncpg"),
        "pgqueuer_drain.py",
        "`Queries.enqueue`, 10,000 a call, no payload",
    ),
    Peer(
        "Procrastinate",
        "concurrency 10",
        ("procrastinate==3.10.0",),
        "procrastinate_drain.py",
        "`batch_defer_async`, 10,000 a call, no arguments",
    ),
    Peer(
        "Chancy",
        "concurrency 100, async executor",
        ("chancy==0.26.0",),
        "chancy_drain.py",
        "`push_many`, batches of 10,000, no arguments",
    ),
)


@dataclass(frozen=True, slots=True)
class PeerResult:
    """A peer's drain as its driver reported it, or why it did not run."""

    peer: Peer
    report: dict[str, Any] | None = None
    not_run: str | None = None
    failures: tuple[str, ...] = ()

    @property
    def rate(self) -> float | None:
        """Jobs a second from the first handler start to the queue drained."""
        value = self.report.get("jobs_per_s") if self.report else None
        return float(value) if value is not None else None

    @property
    def enqueue_rate(self) -> float | None:
        """Jobs a second the driver's bulk enqueue of them took (its own way: `Peer.bulk`)."""
        seconds = self.report.get("enqueue_s") if self.report else None
        return float(self.report["jobs"]) / float(seconds) if self.report and seconds else None

    @property
    def label(self) -> str:
        """Name, the version that ran (else the pinned one), settings."""
        pinned = self.peer.requirements[0].split("==")[-1]
        version = self.report.get("version", pinned) if self.report else pinned
        return f"{self.peer.name} {version} ({self.peer.settings})"


def peers_python() -> Path | str:
    """The peers' venv python (created if missing), or why there is none."""
    python = PEERS_VENV / "bin" / "python"
    if python.exists():
        return python
    base = shutil.which("python3.11") or sys.executable
    done = subprocess.run(
        [base, "-m", "venv", str(PEERS_VENV)], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0 or not python.exists():
        return f"`python3.11 -m venv` failed: {_last_line(done.stderr)}"
    return python


def install(python: Path, peer: Peer) -> str | None:
    """pip install the peer's pinned requirements; the reason when that fails."""
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    try:
        done = subprocess.run(
            [*command, *peer.requirements],
            capture_output=True,
            text=True,
            check=False,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"pip install took over {INSTALL_TIMEOUT_S:g}s"
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return f"pip install {' '.join(peer.requirements)} failed: {(errors or [_last_line(done.stderr)])[0]}"
    return None


def run_peer(python: Path, peer: Peer, server: Server, jobs: int, timeout_s: float) -> PeerResult:
    """Install the peer, give it a fresh database, drain `jobs` no-op jobs with its driver."""
    reason = install(python, peer)
    if reason:
        return PeerResult(peer, not_run=reason)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    with fresh_database(server, install=False) as db_url:
        command = [str(python), str(DRIVERS / peer.driver), "--dsn", as_url(db_url), "--jobs", str(jobs)]
        try:
            done = subprocess.run(
                command, cwd=DRIVERS, env=env, capture_output=True, text=True, check=False, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return PeerResult(peer, not_run=f"did not drain {jobs} jobs within {timeout_s:g}s")
    if done.returncode != 0:
        return PeerResult(peer, not_run=f"driver exited {done.returncode}: {_last_line(done.stderr)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return PeerResult(peer, not_run=f"driver printed no JSON: {_last_line(done.stdout)}")
    report: dict[str, Any] = json.loads(lines[-1])
    failures = []
    if report.get("handled") != jobs:
        failures.append(f"{peer.name}: handlers started {report.get('handled')} times for {jobs} jobs")
    if report.get("left"):
        failures.append(f"{peer.name}: {report['left']} job(s) left unfinished")
    return PeerResult(peer, report=report, failures=tuple(failures))


def run_peers(
    server: Server, jobs: int, timeout_s: float, progress: Callable[[str], None]
) -> list[PeerResult]:
    """Every peer, one after the other; each comes back, run or not."""
    python = peers_python()
    if isinstance(python, str):
        return [PeerResult(peer, not_run=python) for peer in PEERS]
    results = []
    for peer in PEERS:
        progress(f"peer {peer.name}: install and drain {jobs} jobs")
        results.append(run_peer(python, peer, server, jobs, timeout_s))
    return results


def as_url(dsn: str) -> str:
    """A postgresql:// URL for any libpq connection string: asyncpg takes URLs only."""
    params = conninfo.conninfo_to_dict(dsn)
    user = quote(str(params.pop("user", "")), safe="")
    password = str(params.pop("password", "") or "")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    dbname = quote(str(params.pop("dbname", "")), safe="")
    query = urlencode({k: str(v) for k, v in params.items()})  # host (a socket folder too), port, ...
    return f"postgresql://{auth}/{dbname}" + (f"?{query}" if query else "")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"
