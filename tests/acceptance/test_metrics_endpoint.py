"""A real `pgmq-worker run` with its metrics port: /readyz at SIGTERM, one port per process, and a
real Prometheus scraping it answering the autoscaler's query with the expected machine count."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from queues import pgmq
from tests.support.acceptance_handlers import JOBS
from tests.support.ports import free_port
from tests.support.processes import REPO, log_events, spawned, worker_process
from tests.support.scrape import scrape, status, until, value

pytestmark = pytest.mark.slow

HANDLERS = "tests.support.acceptance_handlers"
PROMETHEUS = "/usr/bin/prometheus"
REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_PROMETHEUS"
AUTOSCALER = REPO / "deploy" / "autoscaler" / "fly.toml"


def test_readyz_turns_503_at_sigterm_while_the_drain_runs(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """SIGTERM with a job running: /readyz answers 503 at once (and /livez 200) while the job
    finishes; the job completes and the worker exits 0."""
    port, marker = free_port(), tmp_path / "marks"
    pgmq.ensure_queue(conn, JOBS)
    pgmq.send(conn, JOBS, {"marker": str(marker), "key": "a", "sleeps": [3]})
    argv, env = worker_process(
        db_url, HANDLERS, PGMQ_WORKER_METRICS_PORT=str(port), PGMQ_WORKER_SHUTDOWN_GRACE="10"
    )
    with spawned([*argv, "--queue", JOBS], env, tmp_path / "worker.log") as proc:
        until(marker.exists, timeout=30)
        assert status(port, "/readyz") == 200
        proc.send_signal(signal.SIGTERM)
        until(lambda: status(port, "/readyz") == 503, timeout=2, every=0.05)
        assert status(port, "/livez") == 200
        assert "done a 1" not in marker.read_text()  # still draining
        assert proc.wait(20) == 0
    assert marker.read_text().splitlines() == ["start a 1", "done a 1"]


def test_each_of_processes_serves_its_own_port(db_url: str, tmp_path: Path) -> None:
    """`--processes 2 --metrics-port P`: the workers answer on P and P+1, one process each."""
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    argv, env = worker_process(db_url, HANDLERS, PGMQ_WORKER_METRICS_HOST="127.0.0.1")
    argv += ["--queue", JOBS, "--processes", "2", "--metrics-port", str(port)]
    with spawned(argv, env, tmp_path / "supervisor.log") as proc:
        until(lambda: status(port, "/readyz") == 200 and status(port + 1, "/readyz") == 200, timeout=60)
        for p in (port, port + 1):
            assert value(scrape(p), "pgmq_worker_in_flight", queue=JOBS) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    serving = log_events((tmp_path / "supervisor.log").read_text(), "metrics.serving")
    assert sorted(e["port"] for e in serving) == [port, port + 1]


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- a real Prometheus, and the autoscaler's query -------------------------------------------


def autoscaler_settings() -> dict[str, str]:
    """The FAS_* settings of deploy/autoscaler/fly.toml's [env]."""
    return dict(tomllib.loads(AUTOSCALER.read_text())["env"])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A function starting Prometheus (Debian's) scraping `targets` every second; stopped after."""
    binary = shutil.which("prometheus") or (PROMETHEUS if os.access(PROMETHEUS, os.X_OK) else None)
    if binary is None:
        reason = "prometheus is not installed (Debian: apt-get install prometheus)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str, app: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: worker\n"
            "    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
            f"        labels:\n          app: '{app}'\n"  # what Fly's scraper adds to every series
        )
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (tmp_path / "prometheus.log").open("wb") as log:
            started.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        url = f"http://127.0.0.1:{port}"
        until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, timeout=30)
        return url

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, promql: str) -> float | None:
    """An instant query's single value (None while it has no result)."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def machines(expression: str, metric: str, backlog: float) -> int:
    """Evaluate the autoscaler's machine-count expression (Expr's min, max, ceil and arithmetic)."""
    python = expression.replace(metric, repr(backlog))
    return int(eval(python, {"__builtins__": {}}, {"min": min, "max": max, "ceil": math.ceil}))  # noqa: S307


def test_the_autoscalers_expression_clamps_and_scales_to_zero() -> None:
    """deploy/autoscaler/fly.toml: 50 messages a machine, at most 10 machines, none for no backlog."""
    fas = autoscaler_settings()
    expression, metric = fas["FAS_STARTED_MACHINE_COUNT"], fas["FAS_PROMETHEUS_METRIC_NAME"]
    assert metric in expression
    counts = {backlog: machines(expression, metric, backlog) for backlog in (0, 1, 50, 51, 120, 10**6)}
    assert counts == {0: 0, 1: 1, 50: 1, 51: 2, 120: 3, 10**6: 10}
    assert fas["FAS_PROCESS_GROUP"] == "worker"


def test_prometheus_answers_the_autoscalers_query_for_an_unserved_queue(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path, prometheus: Any
) -> None:
    """120 messages in a queue no worker serves: Prometheus, scraping a running worker of another
    queue, answers the query of deploy/autoscaler/fly.toml with the backlog (3 machines by its
    expression); purged, the query answers 0 (no machine)."""
    fas = autoscaler_settings()
    expression, metric = fas["FAS_STARTED_MACHINE_COUNT"], fas["FAS_PROMETHEUS_METRIC_NAME"]
    n = 120
    pgmq.ensure_queue(conn, "unserved_batch")
    pgmq.send_batch(conn, "unserved_batch", [{"i": i} for i in range(n)])
    port = free_port()
    argv, env = worker_process(
        db_url,
        HANDLERS,
        PGMQ_WORKER_METRICS_PORT=str(port),
        PGMQ_WORKER_METRICS_HOST="127.0.0.1",
        PGMQ_WORKER_METRICS_QUEUE_CACHE="0",
    )
    with spawned([*argv, "--queue", JOBS], env, tmp_path / "worker.log"):
        until(lambda: status(port, "/readyz") == 200, timeout=30)
        url = prometheus(f"127.0.0.1:{port}", app="pgmq-app")
        promql = fas["FAS_PROMETHEUS_QUERY"].replace("$APP_NAME", "pgmq-app")
        until(lambda: query(url, promql) == n, timeout=20, every=0.5)
        backlog = query(url, promql)
        assert backlog is not None
        assert machines(expression, metric, backlog) == 3
        conn.execute("SELECT pgmq.purge_queue(%s)", ("unserved_batch",))
        until(lambda: query(url, promql) == 0, timeout=20, every=0.5)
        assert machines(expression, metric, 0) == 0  # scale to zero


def test_pgmq_worker_web_serves_its_metrics_on_their_own_port(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """`pgmq-worker web` with PGMQ_WORKER_WEB_METRICS_PORT: the app on its port, /metrics (its
    request counts and every queue's gauges) only on the other."""
    pgmq.ensure_queue(conn, "web_backlog")
    pgmq.send_batch(conn, "web_backlog", [{"i": i} for i in range(4)])
    app_port, metrics_port = free_port(), free_port()
    argv, env = worker_process(
        db_url,
        HANDLERS,
        PGMQ_WORKER_WEB_METRICS_PORT=str(metrics_port),
        PGMQ_WORKER_WEB_METRICS_HOST="127.0.0.1",
    )
    argv[argv.index("run")] = "web"
    with spawned([*argv, "--host", "127.0.0.1", "--port", str(app_port)], env, tmp_path / "web.log"):
        until(lambda: status(app_port, "/healthz") == 200, timeout=60)
        assert status(app_port, "/metrics") == 404
        samples = scrape(metrics_port)
    assert value(samples, "pgmq_worker_queue_messages", queue="web_backlog", state="visible") == 4
    assert (
        value(samples, "pgmq_worker_web_requests_total", method="GET", route="/healthz", status="200") or 0
    ) >= 1
