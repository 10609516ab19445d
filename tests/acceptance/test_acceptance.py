"""Acceptance: a real `pgmq-worker run` process, killed, stopped and starved of its database.

Each scenario runs twice: straight to Postgres, and through PgBouncer in transaction mode (the
worker told so with PGMQ_WORKER_POOLER=transaction: no prepared statements, no LISTEN, so it
wakes up by polling). Handlers live in tests/support/acceptance_handlers.py and write marker files, so
the tests see from outside which attempts ran; final state is read straight from pgmq's tables.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from queues import pgmq
from tests.support.acceptance_handlers import (
    API_LIMIT,
    CRASH,
    CRASH_EXIT_CODE,
    CRASH_MAX_ATTEMPTS,
    JOBS,
    LIMITED,
    ORDERS,
    ORDERS_MAX_ATTEMPTS,
    STEPPED,
    SYNC_SLOW,
)
from tests.support.helpers import dead, job, rows
from tests.support.processes import REPO, WorkerProcess, Workers, worker_process

pytestmark = pytest.mark.slow

APPLICATION_NAME = "pgmq-worker"  # DatabaseSettings.application_name: how we find its backends
GRACE_S = 2.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    """How the worker (and the test's producers) reach the test database."""

    name: str
    url: str
    pooled: bool

    def connect(self) -> psycopg.Connection[Any]:
        """A producer connection on this route (never preparing through a transaction pooler)."""
        if self.pooled:
            return psycopg.connect(self.url, autocommit=True, prepare_threshold=None)
        return psycopg.connect(self.url, autocommit=True)


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, db_url: str) -> Route:
    """The test's database, directly or through PgBouncer in transaction mode."""
    if request.param == "pgbouncer":
        return Route("pgbouncer", request.getfixturevalue("pgbouncer_url"), pooled=True)
    return Route("direct", db_url, pooled=False)


# -- the worker process ----------------------------------------------------------------------------

HANDLERS = "tests.support.acceptance_handlers"


def route_settings(route: Route) -> dict[str, str]:
    """The settings of a worker subprocess on this route: fast timings, info-level logs."""
    return {
        "PGMQ_WORKER_POOLER": "transaction" if route.pooled else "direct",
        "PGMQ_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "PGMQ_WORKER_SHUTDOWN_GRACE": f"{GRACE_S:g}",
        "PGMQ_WORKER_RECONNECT_MAX": "1",
        "PGMQ_WORKER_CONNECT_TIMEOUT": "5",
        "PGMQ_WORKER_LOG_LEVEL": "info",
    }


@pytest.fixture
def workers(route: Route, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test's route; none outlives the test."""
    started = Workers(route.url, tmp_path, (HANDLERS,), route_settings(route))
    try:
        yield started
    finally:
        started.kill_leftovers()


# -- waiting and reading state -----------------------------------------------------------------------


def wait_for(
    what: str, check: Callable[[], T], timeout: float, *, keep_alive: tuple[WorkerProcess, ...] = ()
) -> T:
    """Poll `check` until it returns something truthy; fail at the deadline or if a worker dies."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        for worker in keep_alive:
            if not worker.alive():
                pytest.fail(
                    f"worker exited ({worker.proc.returncode}) while waiting for {what}\n{worker.tail()}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(w.tail() for w in keep_alive)
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tails}")
        time.sleep(0.05)


def marks(marker: Path) -> list[tuple[str, str, int]]:
    """The `(event, key, attempt)` lines the handlers wrote, in order."""
    if not marker.exists():
        return []
    found = []
    for line in marker.read_text().split("\n")[:-1]:  # a line still being written has no newline
        event, key, attempt = line.split()
        found.append((event, key, int(attempt)))
    return found


def started_wakeup(worker: WorkerProcess) -> str:
    """The wake-up mode the worker announced in `worker.started`."""
    events = wait_for("worker.started", lambda: worker.events("worker.started"), 15, keep_alive=(worker,))
    return str(events[0]["wakeup"])


def expected_wakeup(route: Route) -> str:
    """LISTEN needs a session of its own: through a transaction pooler the worker only polls."""
    return "poll" if route.pooled else "listen+poll"


def assert_clean(*processes: WorkerProcess) -> None:
    """No traceback, unretrieved task exception or prepared-statement error on any stderr."""
    for worker in processes:
        text = worker.stderr()
        assert "Traceback" not in text, worker.tail(80)
        assert "never retrieved" not in text, worker.tail(80)
        assert "prepared statement" not in text.lower(), worker.tail(80)


def worker_backends(conn: psycopg.Connection[Any]) -> int:
    """How many backends the worker (found by its application_name) has open."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
        (APPLICATION_NAME,),
    ).fetchone()
    return int(row[0]) if row else 0


def terminate_worker_backends(conn: psycopg.Connection[Any]) -> int:
    """pg_terminate_backend on every backend of the worker (found by its application_name)."""
    row = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database() AND pid <> pg_backend_pid()",
        (APPLICATION_NAME,),
    ).fetchone()
    return int(row[0]) if row else 0


def invisible(conn: psycopg.Connection[Any], queue: str) -> list[dict[str, Any]]:
    """Messages of a queue hidden right now (read and not yet visible again)."""
    return [r for r in rows(conn, queue) if not r["visible"]]


# -- the scenarios ------------------------------------------------------------------------------------


def test_sigkill_mid_job_redelivers_and_finishes(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Messages whose worker is SIGKILLed mid-job reappear after their visibility timeout and a new
    worker finishes them (attempt 2); the killed attempts never completed."""
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, JOBS)
        ids = [
            pgmq.send(producer, JOBS, {"key": f"k{i}", "marker": str(marker), "sleeps": [60, 0.1]})
            for i in range(3)
        ]

    first = workers.start(JOBS)
    assert started_wakeup(first) == expected_wakeup(route)
    wait_for("three first attempts", lambda: len(marks(marker)) == 3, 15, keep_alive=(first,))
    assert sorted(r["msg_id"] for r in invisible(conn, JOBS)) == ids  # leased while running

    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    second = workers.start(JOBS)
    wait_for("the queue to drain", lambda: not rows(conn, JOBS), 20, keep_alive=(second,))
    # The ack commits before the worker logs it: give the last log line its moment.
    wait_for("three successes logged", lambda: len(second.events("job.succeeded")) == 3, 5)
    assert second.alive()
    for i in range(3):
        key = f"k{i}"
        assert [m for m in marks(marker) if m[1] == key] == [
            ("start", key, 1),
            ("start", key, 2),
            ("done", key, 2),
        ]
    retried = second.events("job.succeeded")
    assert sorted((e["msg_id"], e["attempt"]) for e in retried) == [(i, 2) for i in ids]
    assert dead(conn, JOBS) == []
    assert second.stop() == 0
    assert_clean(first, second)


def test_sigterm_with_slow_jobs_exits_zero_and_leaves_nothing_invisible(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """On SIGTERM the worker fetches nothing more, lets jobs that finish within the grace period
    finish, releases the rest (visible again at once, not after their timeout) and exits 0."""
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, JOBS)
        quick = [
            pgmq.send(producer, JOBS, {"key": f"quick{i}", "marker": str(marker), "sleeps": [1.0]})
            for i in range(2)
        ]
        slow = [
            pgmq.send(producer, JOBS, {"key": f"slow{i}", "marker": str(marker), "sleeps": [60, 0.1]})
            for i in range(2)
        ]

    worker = workers.start(JOBS)
    assert started_wakeup(worker) == expected_wakeup(route)
    wait_for("four running jobs", lambda: len(marks(marker)) == 4, 15, keep_alive=(worker,))
    with route.connect() as producer:
        late = pgmq.send(producer, JOBS, {"key": "late", "marker": str(marker)}, delay_s=1)

    stopped_at = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - stopped_at < GRACE_S + 3  # it did not wait for the 60 s jobs

    assert sorted(k for e, k, _ in marks(marker) if e == "done") == ["quick0", "quick1"]
    left = rows(conn, JOBS)
    assert sorted(r["msg_id"] for r in left) == sorted([*slow, late])
    assert all(r["visible"] for r in left), left  # nothing left invisible
    assert {r["msg_id"]: r["read_ct"] for r in left} == {slow[0]: 1, slow[1]: 1, late: 0}
    assert sorted(e["msg_id"] for e in worker.events("job.succeeded")) == quick
    assert worker.events("worker.releasing")[0]["in_flight"] == 2

    # Released, not lost: the next worker finishes them without waiting out a timeout.
    again = workers.start(JOBS)
    wait_for("the released jobs to finish", lambda: not rows(conn, JOBS), 15, keep_alive=(again,))
    finished = sorted(k for e, k, _ in marks(marker) if e == "done")
    assert finished == ["late", "quick0", "quick1", "slow0", "slow1"]
    assert again.stop() == 0
    assert_clean(worker, again)


def test_terminated_backends_lose_nothing_and_the_worker_stays_up(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], db_url: str, tmp_path: Path
) -> None:
    """While a stream of messages (sent with plain SQL) is processed, the worker's database
    backends are terminated again and again: every message is still finished, nothing is
    dead-lettered, and the process keeps running until SIGTERM."""
    marker = tmp_path / "marks"
    count = 40
    worker = workers.start(JOBS)
    assert started_wakeup(worker) == expected_wakeup(route)

    wait_for("the worker's connections", lambda: worker_backends(conn), 10, keep_alive=(worker,))
    cuts: list[int] = []

    def cut() -> bool:
        """One round of pg_terminate_backend; True once three rounds have cut something."""
        cuts.append(terminate_worker_backends(conn))
        return sum(1 for n in cuts if n) >= 3

    # The producer goes straight to the server: its connection must not be among those cut.
    with psycopg.connect(db_url, autocommit=True, application_name="acceptance-producer") as producer:
        for i in range(count):
            body = json.dumps({"key": f"m{i}", "marker": str(marker), "sleeps": [0.3]})
            producer.execute("SELECT pgmq.send(%s, %s::jsonb)", (JOBS, body))
            if i % 5 == 4:
                cut()
            time.sleep(0.08)
    # Again and again: a worker that had no connection open at some rounds is cut once more.
    wait_for("three rounds that cut the worker's connections", cut, 30, keep_alive=(worker,))

    def all_done() -> bool:
        done = {k for e, k, _ in marks(marker) if e == "done"}
        return len(done) == count and not rows(conn, JOBS)

    wait_for(f"all {count} messages finished", all_done, 30, keep_alive=(worker,))
    assert worker.alive()
    assert dead(conn, JOBS) == []
    assert worker.stop() == 0
    assert_clean(worker)


def test_poison_messages_go_straight_to_the_dead_letter_queue(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A message that is not a JSON object, or fails the handler's model, is dead-lettered on its
    first delivery with the validation error (no retries though 5 attempts are allowed); valid
    messages beside it are processed."""
    marker = tmp_path / "marks"
    wrong_type = {"order_id": "seven", "marker": str(marker)}
    with route.connect() as producer:
        pgmq.ensure_queue(producer, ORDERS)
        # Another client's malformed messages, sent with plain SQL.
        sent = {
            "list": producer.execute("SELECT pgmq.send(%s, '[1, 2, 3]'::jsonb)", (ORDERS,)).fetchone(),
            "str": producer.execute("SELECT pgmq.send(%s, '\"just text\"'::jsonb)", (ORDERS,)).fetchone(),
        }
        poison = {kind: int(row[0]) for kind, row in sent.items() if row}
        poison["model"] = pgmq.send(producer, ORDERS, wrong_type)
        valid = pgmq.send(producer, ORDERS, {"order_id": 7, "marker": str(marker)})

    worker = workers.start(ORDERS)
    assert started_wakeup(worker) == expected_wakeup(route)
    wait_for(
        "three dead letters and an empty queue",
        lambda: len(dead(conn, ORDERS)) == 3 and not rows(conn, ORDERS),
        15,
        keep_alive=(worker,),
    )
    records = {r["msg_id"]: r for r in dead(conn, ORDERS)}
    assert set(records) == set(poison.values())
    for record in records.values():
        assert record["queue"] == ORDERS
        assert record["reason"] == "invalid_payload"
        assert record["attempts"] == 1
        assert record["max_attempts"] == ORDERS_MAX_ATTEMPTS
        assert record["error"]["type"] == "InvalidPayload"
    assert records[poison["list"]]["payload"] == [1, 2, 3]
    assert records[poison["str"]]["payload"] == "just text"
    assert records[poison["model"]]["payload"] == wrong_type
    assert "JSON object" in records[poison["list"]]["error"]["message"]
    assert "JSON object" in records[poison["str"]]["error"]["message"]
    assert "order_id" in records[poison["model"]]["error"]["message"]

    assert marks(marker) == [("done", "7", 1)]
    # The ack commits before the worker logs it: give the log line its moment.
    wait_for("the valid order's success logged", lambda: worker.events("job.succeeded"), 5)
    assert [e["msg_id"] for e in worker.events("job.succeeded")] == [valid]
    assert worker.events("job.retry_scheduled") == []
    assert worker.stop() == 0
    assert_clean(worker)


def test_a_handler_that_kills_its_process_ends_in_the_dead_letter_queue(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A handler that kills the worker (os._exit) runs max_attempts times, once per restarted
    worker; the next delivery is dead-lettered as 'crashed' without running it, so a supervisor
    restarting the worker does not crash-loop."""
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, CRASH)
        msg_id = pgmq.send(producer, CRASH, {"key": "boom", "marker": str(marker)})

    crashed: list[WorkerProcess] = []
    survivor: WorkerProcess | None = None
    for _ in range(CRASH_MAX_ATTEMPTS + 2):  # a supervisor, as Fly.io restarts a dead process
        worker = workers.start(CRASH)
        wait_for("a crash or a dead letter", lambda: not worker.alive() or dead(conn, CRASH), 15)  # noqa: B023
        if worker.alive():
            survivor = worker
            break
        assert worker.proc.returncode == CRASH_EXIT_CODE, worker.tail()
        crashed.append(worker)

    assert len(crashed) == CRASH_MAX_ATTEMPTS
    assert survivor is not None
    assert marks(marker) == [("start", "boom", n) for n in range(1, CRASH_MAX_ATTEMPTS + 1)]
    assert rows(conn, CRASH) == []
    [record] = dead(conn, CRASH)
    assert record["msg_id"] == msg_id
    assert record["reason"] == "crashed"
    assert record["payload"] == {"key": "boom", "marker": str(marker)}
    assert record["max_attempts"] == CRASH_MAX_ATTEMPTS
    assert record["attempts"] > CRASH_MAX_ATTEMPTS  # the delivery that found the attempts spent
    assert record["error"]["message"]
    assert survivor.stop() == 0
    assert_clean(*crashed, survivor)


def test_sigterm_with_a_blocking_def_handler_exits_soon_after_the_grace_period(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A `def` handler (a thread, which cannot be cancelled) still running when the grace period
    ends does not hold up the exit: its message is released and the worker exits 0 without
    waiting for the handler to return."""
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, SYNC_SLOW)
        msg_id = pgmq.send(producer, SYNC_SLOW, {"key": "blocking", "marker": str(marker), "sleeps": [30]})
    worker = workers.start(SYNC_SLOW)
    wait_for("the job to start", lambda: marks(marker), 15, keep_alive=(worker,))
    stopped_at = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - stopped_at < GRACE_S + 3
    assert marks(marker) == [("start", "blocking", 1)]
    [row] = rows(conn, SYNC_SLOW)
    assert (row["msg_id"], row["read_ct"], row["visible"]) == (msg_id, 1, True)
    assert_clean(worker)


@pytest.mark.parametrize("route", ["direct"], indirect=True)
def test_the_worker_fetches_again_promptly_after_its_connections_are_cut(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """After every one of its database connections is terminated at once (a pool holding six),
    the worker picks up the next message within seconds, not after a backoff per dead connection.

    Direct only: through a transaction pooler the worker holds no server connection while idle.
    """
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, JOBS)
        pgmq.send(producer, JOBS, {"key": "before", "marker": str(marker)})
    # A pool that keeps several connections open (as web-scale settings do) holds that many
    # dead ones after the cut.
    worker = workers.start(JOBS, env={"PGMQ_WORKER_POOL_MIN_SIZE": "6"})
    wait_for("the first job", lambda: not rows(conn, JOBS), 15, keep_alive=(worker,))
    wait_for("six pooled connections", lambda: worker_backends(conn) >= 6, 10, keep_alive=(worker,))
    assert terminate_worker_backends(conn) >= 6

    with route.connect() as producer:
        pgmq.send(producer, JOBS, {"key": "after", "marker": str(marker)})
    wait_for("the job sent after the cut", lambda: ("done", "after", 1) in marks(marker), 5)
    assert worker.stop() == 0
    assert_clean(worker)


def test_an_undeclared_transaction_pooler_is_a_one_line_error_not_a_crash_loop(
    pgbouncer_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Through PgBouncer (port 6432-style, not recognised) without PGMQ_WORKER_POOLER=transaction,
    the start-up probe sees the transaction pooler (before, prepared statements collided after a
    few batches); the worker stops with one line naming the setting, exit 1, and the messages
    stay in the queue for a correctly configured worker."""
    marker = tmp_path / "marks"
    pgmq.ensure_queue(conn, JOBS)
    # Enough messages that statements collide for certain: reads and acks run on two pipelined
    # connections, and whether PgBouncer swaps their server connections within a few batches is
    # timing (a run without a collision is harmless, but proves nothing here).
    for i in range(200):
        pgmq.send(conn, JOBS, {"key": f"m{i}", "marker": str(marker)})
    settings = route_settings(Route("pgbouncer", pgbouncer_url, pooled=True))
    settings["PGMQ_WORKER_POOLER"] = "direct"  # the mistake
    argv, env = worker_process(pgbouncer_url, HANDLERS, **settings)
    done = subprocess.run(
        [*argv, "--burst", "--queue", JOBS, "--concurrency", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "PGMQ_WORKER_POOLER=transaction" in errors[0]
    assert "Traceback" not in done.stderr
    finished = {key for event, key, _ in marks(marker) if event == "done"}
    assert len(rows(conn, JOBS)) + len(finished) >= 200  # nothing lost: unfinished ones remain
    assert dead(conn, JOBS) == []


def test_sigkill_during_step_3_resumes_at_step_3(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A worker killed inside step 3: the next worker runs steps 3 and 4 only; 1 and 2 ran once."""
    marker = tmp_path / "marks"
    with route.connect() as producer:
        pgmq.ensure_queue(producer, STEPPED)
        msg_id = pgmq.send(producer, STEPPED, {"key": "k", "marker": str(marker), "sleeps": [60, 0]})
    first = workers.start(STEPPED)
    wait_for("step 3 to start", lambda: ("enrich", "k", 1) in marks(marker), 20, keep_alive=(first,))
    # Progress writes are coalesced (PGMQ_WORKER_PROGRESS_INTERVAL): the row shows step 3 shortly.
    progress = lambda: (job(conn, STEPPED, msg_id)["step"], job(conn, STEPPED, msg_id)["progress"])  # noqa: E731
    wait_for("the row to show step 3 of 4", lambda: progress() == ("enrich", 50), 5, keep_alive=(first,))
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    second = workers.start(STEPPED)
    wait_for("the queue to drain", lambda: not rows(conn, STEPPED), 30, keep_alive=(second,))
    assert marks(marker) == [
        ("fetch", "k", 1),
        ("parse", "k", 1),
        ("enrich", "k", 1),
        ("enrich", "k", 2),
        ("store", "k", 2),
    ]
    row = job(conn, STEPPED, msg_id)
    assert (row["status"], row["result"], row["progress"]) == ("succeeded", {"value": 4}, 100)
    assert second.stop() == 0


class Recorder(BaseHTTPRequestHandler):
    """A stand-in API: each GET takes 50 ms; start and end times go to the server's list."""

    def do_GET(self) -> None:
        start = time.monotonic()
        time.sleep(0.05)
        self.send_response(200)
        self.end_headers()
        self.server.calls.append((start, time.monotonic()))  # type: ignore[attr-defined]

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[str, list[tuple[float, float]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.calls = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.calls  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_the_limit_holds_across_two_worker_processes(
    route: Route, workers: Workers, conn: psycopg.Connection[Any], api: tuple[str, list[tuple[float, float]]]
) -> None:
    """Two workers, 10 handlers each, 30 calls under Limit(concurrency=3, per_minute=300): the local
    HTTP server (a stand-in for an external API) sees at most 3 at once and about 5 a second."""
    url, calls = api
    with route.connect() as producer:
        pgmq.ensure_queue(producer, LIMITED)
        pgmq.send_batch(producer, LIMITED, [{"url": url} for _ in range(30)])
    first = workers.start(LIMITED, concurrency=10)
    second = workers.start(LIMITED, concurrency=10)
    wait_for("the queue to drain", lambda: not rows(conn, LIMITED), 60, keep_alive=(first, second))
    assert len(calls) == 30
    starts = sorted(s for s, _ in calls)
    peak = max(sum(1 for s, e in calls if s <= t < e) for t in starts)
    assert peak <= API_LIMIT.concurrency  # type: ignore[operator]
    # The bucket holds one second's share (5): after that first burst, calls come 5 a second.
    paced = starts[5:]
    rate = (len(paced) - 1) / (paced[-1] - paced[0])
    assert 4.0 <= rate <= 5.0 * 1.15, f"{rate:.2f} calls/s after the burst"
    for i, t in enumerate(starts):  # any window: at most the burst + 5 a second (+2 for HTTP jitter)
        for j in range(i + 1, len(starts)):
            assert j - i + 1 <= 5 + 5 * (starts[j] - t) + 2, (i, j, starts[j] - t)
    assert first.stop() == 0 and second.stop() == 0
