"""The worker's metrics endpoint: the series equal what happened, and the health checks tell the truth."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import conninfo, sql

from db.connect import Target
from db.pgmq_install import detect
from queues import pgmq
from queues.depths import queue_depths
from queues.exporter import Exporter
from tests.support.helpers import make_worker, send
from tests.support.ports import free_port
from tests.support.processes import worker_process
from tests.support.scrape import scrape, status, until, value
from worker import Context, Permanent, Registry, handler
from worker.errors import MetricsPortUnavailable
from worker.runner import Worker


def run_beside(worker: Worker, body: Callable[[], None], timeout: float = 25) -> None:
    """Run the worker (not in burst mode) while `body` runs in a thread of its own; then stop it."""

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        probe = asyncio.ensure_future(asyncio.to_thread(body))
        try:
            done, _ = await asyncio.wait({task, probe}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # the worker failed: say why
            await asyncio.wait_for(probe, timeout)
        finally:
            worker.stop()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)

    asyncio.run(go())


def metrics_worker(target: Target, reg: Registry, **settings: Any) -> tuple[Worker, int]:
    """A worker serving its endpoint on a free loopback port, the queue gauges never cached."""
    port = free_port()
    worker = make_worker(
        target,
        reg,
        burst=False,
        metrics_port=port,
        metrics_host="127.0.0.1",
        metrics_queue_cache=timedelta(0),
        **settings,
    )
    return worker, port


def test_the_series_equal_a_known_run(conn: psycopg.Connection[Any], reg: Registry, target: Target) -> None:
    """After 5 successes and 2 dead letters, with 3 messages left in a queue no worker serves, the
    counters, histograms and gauges say exactly that (the unserved queue included)."""

    @handler("m_work", registry=reg, max_attempts=1)
    async def work(payload: dict[str, Any], _ctx: Context) -> None:
        if payload.get("fail"):
            raise Permanent("refused on purpose")

    send(conn, "m_idle", {"n": 1}, {"n": 2})
    pgmq.send(conn, "m_idle", {"n": 3}, delay_s=600)  # invisible: delayed
    send(conn, "m_work", *[{"n": i} for i in range(5)], {"fail": True}, {"fail": True})
    worker, port = metrics_worker(target, reg, queues=("m_work",))
    seen: dict[str, Any] = {}

    def body() -> None:
        def settled() -> bool:
            samples = scrape(port)
            return value(samples, "pgmq_worker_job_duration_seconds_count", queue="m_work") == 7

        until(settled)
        seen["samples"] = scrape(port)
        seen["livez"], seen["readyz"] = status(port, "/livez"), status(port, "/readyz")

    run_beside(worker, body)
    s = seen["samples"]
    jobs = "pgmq_worker_jobs_total"
    assert value(s, jobs, queue="m_work", outcome="succeeded") == 5
    assert value(s, jobs, queue="m_work", outcome="dead_lettered") == 2
    for outcome in ("retried", "released", "deferred"):
        assert value(s, jobs, queue="m_work", outcome=outcome) == 0
    assert value(s, "pgmq_worker_job_wait_seconds_count", queue="m_work") == 7
    assert value(s, "pgmq_worker_in_flight", queue="m_work") == 0
    gauges = {
        ("m_idle", "visible"): 2,
        ("m_idle", "invisible"): 1,
        ("m_work", "visible"): 0,
        ("m_work", "invisible"): 0,
    }
    for (queue, state), expected in gauges.items():
        assert value(s, "pgmq_worker_queue_messages", queue=queue, state=state) == expected, (queue, state)
    assert value(s, "pgmq_worker_dead_letters", queue="m_work") == 2
    assert value(s, "pgmq_worker_dead_letters", queue="m_idle") == 0
    assert value(s, "pgmq_worker_queue_messages", queue="m_work_dlq", state="visible") is None  # not a queue
    assert (value(s, "pgmq_worker_queue_oldest_seconds", queue="m_idle") or 0) >= 0
    assert value(s, "pgmq_worker_lease_renewals_total") is not None
    assert value(s, "pgmq_worker_leases_lost_total") == 0
    assert value(s, "pgmq_worker_db_reconnects_total") == 0
    assert value(s, "pgmq_worker_webhook_deliveries_total", result="delivered") == 0
    [info] = [labels for (name, labels) in s if name == "pgmq_worker_info"]
    assert dict(info)["wakeup"] in {"listen+poll", "poll"}
    assert dict(info)["pgmq_version"] == worker.features.version if worker.features else False
    assert (seen["livez"], seen["readyz"]) == (200, 200)


def test_queue_depths_match_pgmq_metrics(conn: psycopg.Connection[Any]) -> None:
    """The one-statement depths of every queue agree with pgmq.metrics queue by queue (1.4's visible
    count included), and a dead-letter queue is its queue's `dead`, not a queue of its own."""
    send(conn, "d_one", {"a": 1}, {"a": 2})
    pgmq.send(conn, "d_one", {"a": 3}, delay_s=600)
    send(conn, "d_two")
    pgmq.send(conn, "d_two_dlq", {"dead": True})
    features = detect(conn)
    found = {q.queue: q for q in queue_depths(conn, features)}
    assert set(found) == {"d_one", "d_two"}
    for name, q in found.items():
        assert q == pgmq.metrics(conn, name, features)
    assert (found["d_one"].visible, found["d_one"].in_flight, found["d_two"].dead) == (2, 1, 1)


def test_livez_fails_while_a_blocking_call_holds_the_loop(
    reg: Registry, target: Target, conn: psycopg.Connection[Any]
) -> None:
    """A sync call inside an `async def` handler blocks the event loop: /livez (answered from a
    thread) turns 503 once the block passes the threshold, and 200 again after it."""
    blocking = threading.Event()

    @handler("m_block", registry=reg)
    async def hog(_payload: dict[str, Any], _ctx: Context) -> None:
        blocking.set()
        time.sleep(3)  # noqa: ASYNC251  the point of the test: the loop is stuck here

    worker, port = metrics_worker(target, reg, loop_block_threshold=timedelta(seconds=1))
    seen: list[int] = []

    def body() -> None:
        until(lambda: status(port, "/livez") == 200)
        send(conn, "m_block", {})
        until(blocking.is_set)
        until(lambda: seen.append(status(port, "/livez")) or seen[-1] == 503, timeout=5, every=0.2)
        until(lambda: status(port, "/livez") == 200, timeout=10)

    run_beside(worker, body)
    assert seen[-1] == 503


def test_readyz_is_503_while_the_database_refuses_connections(
    reg: Registry, target: Target, db_url: str, server_url: str
) -> None:
    """While the worker's database refuses every connection /readyz answers 503 (and /livez 200:
    the process is fine, restarting it would not help); once it is back, 200 again."""

    @handler("m_ready", registry=reg)
    async def noop(_payload: dict[str, Any], _ctx: Context) -> None:
        pass

    dbname = conninfo.conninfo_to_dict(db_url)["dbname"]
    worker, port = metrics_worker(target, reg)

    def refuse(allow: bool) -> None:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(str(dbname)), sql.SQL("true" if allow else "false")
                )
            )
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
                )

    def body() -> None:
        until(lambda: status(port, "/readyz") == 200)
        refuse(allow=False)
        try:
            until(lambda: status(port, "/readyz") == 503, timeout=10)
            assert status(port, "/livez") == 200
        finally:
            refuse(allow=True)
        until(lambda: status(port, "/readyz") == 200, timeout=15)

    try:
        run_beside(worker, body)
    finally:
        refuse(allow=True)


def test_readyz_is_503_from_the_stop_on_through_the_drain(
    reg: Registry, target: Target, conn: psycopg.Connection[Any]
) -> None:
    """Asked to stop with a handler still running, the worker answers /readyz 503 during the drain."""
    started = threading.Event()
    release = threading.Event()

    @handler("m_drain", registry=reg)
    async def slow(_payload: dict[str, Any], _ctx: Context) -> None:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.05)

    worker, port = metrics_worker(target, reg)
    send(conn, "m_drain", {})
    during: dict[str, int] = {}

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while not started.is_set():
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(status, port, "/readyz") == 200
        worker.stop()
        during["readyz"] = await asyncio.to_thread(status, port, "/readyz")
        during["livez"] = await asyncio.to_thread(status, port, "/livez")
        release.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    assert during == {"readyz": 503, "livez": 200}
    with pytest.raises(httpx.TransportError):  # the port is given back once the worker stopped
        status(port, "/livez")


def test_any_other_path_is_404_and_any_other_method_405() -> None:
    """An unknown path gets 404 and any method but GET 405 from the endpoint: never a 5xx or a hang."""
    exporter = Exporter("127.0.0.1", 0, {"/livez": lambda: (200, "text/plain", b"ok\n")})
    exporter.start()
    base = f"http://127.0.0.1:{exporter.port}"

    @settings(max_examples=60, deadline=None)
    @given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
    def check(path: str) -> None:
        try:
            response = client.get(f"{base}/{path.lstrip('/')}")
        except httpx.InvalidURL:
            return  # the client refused to send it
        expected = 200 if response.url.raw_path.split(b"?")[0] == b"/livez" else 404
        assert response.status_code == expected

    try:
        with httpx.Client(timeout=5) as client:
            check()
            for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
                assert client.request(method, f"{base}/livez").status_code == 405
    finally:
        exporter.close()


def test_a_taken_port_stops_the_worker_at_start_with_one_line(reg: Registry, target: Target) -> None:
    """The metrics port in use: the worker does not start, and says where it could not listen."""

    @handler("m_taken", registry=reg)
    async def noop(_payload: dict[str, Any], _ctx: Context) -> None:
        pass

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = make_worker(target, reg, burst=True, metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(MetricsPortUnavailable, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(asyncio.wait_for(worker.run(), 20))


@pytest.mark.parametrize("value", ["0", "65536", "-1", "nine"])
def test_a_bad_metrics_port_is_a_usage_error(db_url: str, value: str) -> None:
    """`--metrics-port` outside 1..65535 (or not a number) exits 2 with click's message; the
    setting the same value exits 1 with `invalid setting`."""
    argv, env = worker_process(db_url, "tests.support.acceptance_handlers")
    flag = subprocess.run(
        [*argv, "--metrics-port", value], env=env, capture_output=True, text=True, check=False
    )
    assert flag.returncode == 2 and "--metrics-port" in flag.stderr
    env["PGMQ_WORKER_METRICS_PORT"] = value
    setting = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert (
        setting.returncode == 1 and "invalid setting" in setting.stderr and "Traceback" not in setting.stderr
    )
