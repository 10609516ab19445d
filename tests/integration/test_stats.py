"""`pgmq-worker stats` and queues.stats: per queue over a window, the numbers equal what happened.

A real worker runs a known mix (succeeded, failed with a retry scheduled, dead-lettered) and the
counts must match; the percentiles are checked against the job rows' timestamps set to known
values (linear interpolation, as percentile_cont computes it). Stuck jobs are made the way a
killed worker leaves them; failed webhooks by a worker whose endpoint is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.connect import Target
from queues import enqueue, pgmq
from queues.stats import QueueStats, aqueue_stats, queue_stats
from tests.support.helpers import make_worker, visible_now
from worker import Context, Permanent, Registry, Retry, handler
from worker.cli import main
from worker.store import deliveries

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-some-length").decode()
BEAT = timedelta(milliseconds=200)


def percentile(values: list[float], p: float) -> float:
    """percentile_cont: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * p
    lo, hi = math.floor(at), math.ceil(at)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def statuses(conn: psycopg.Connection[Any], queue: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT status FROM pgmq_worker.jobs WHERE queue = %s", (queue,))]


def run_until(target: Target, reg: Registry, settled: Any, **settings: Any) -> None:
    """Run a (non-burst) worker until `settled()` is true, then stop it warm."""
    worker = make_worker(target, reg, burst=False, registry_heartbeat=BEAT, **settings)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        deadline = asyncio.get_running_loop().time() + 20
        while not await asyncio.to_thread(settled):
            assert asyncio.get_running_loop().time() < deadline, "the run did not settle"
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())


def by_queue(rows: list[QueueStats]) -> dict[str, QueueStats]:
    return {r.queue: r for r in rows}


@pytest.fixture
def known_run(target: Target, conn: psycopg.Connection[Any], reg: Registry) -> None:
    """st_known: 6 succeed, 3 fail (a retry in 10 minutes), 2 are dead-lettered; st_other: 1
    succeeds; st_idle exists and nothing happens on it."""

    @handler("st_known", registry=reg, max_attempts=3)
    async def known(payload: dict[str, Any], ctx: Context) -> None:
        if payload["fate"] == "retry":
            raise Retry(delay=600)
        if payload["fate"] == "dead":
            raise Permanent("no")

    @handler("st_other", registry=reg)
    async def other(payload: dict[str, Any], ctx: Context) -> None:
        return None

    for queue in ("st_known", "st_other", "st_idle"):
        pgmq.ensure_queue(conn, queue)
    for fate in ["ok"] * 6 + ["retry"] * 3 + ["dead"] * 2:
        enqueue(conn, "st_known", {"fate": fate})
    enqueue(conn, "st_other", {})

    def settled() -> bool:
        done = sorted(statuses(conn, "st_known")) == ["dead"] * 2 + ["failed"] * 3 + ["succeeded"] * 6
        return done and statuses(conn, "st_other") == ["succeeded"]

    run_until(target, reg, settled, queues=("st_known", "st_other"))


@pytest.mark.usefixtures("known_run")
def test_the_counts_equal_a_known_run(conn: psycopg.Connection[Any]) -> None:
    """Per queue: succeeded, failed (retry scheduled), dead, the success rate of the finished ones;
    a queue nothing happened on has zeros and no percentiles."""
    stats = by_queue(queue_stats(conn, since=timedelta(hours=1)))
    known = stats["st_known"]
    assert (known.succeeded, known.failed, known.dead, known.cancelled) == (6, 3, 2, 0)
    assert known.success_rate == pytest.approx(6 / 8)
    assert (known.stuck, known.webhook_failures) == (0, 0)
    assert known.duration_p50_ms is not None and known.duration_p50_ms >= 0
    assert known.wait_p95_ms is not None and known.wait_p95_ms >= 0
    assert (stats["st_other"].succeeded, stats["st_other"].success_rate) == (1, 1.0)
    idle = stats["st_idle"]
    assert (idle.succeeded, idle.failed, idle.dead, idle.success_rate, idle.duration_p50_ms) == (
        0, 0, 0, None, None,
    )  # fmt: skip
    assert "st_known_dlq" not in stats  # dead-letter queues are not queues of their own here
    assert [r.queue for r in queue_stats(conn, queue="st_other", since=timedelta(hours=1))] == ["st_other"]


@pytest.mark.usefixtures("known_run")
def test_the_percentiles_are_those_of_the_job_rows_timestamps(conn: psycopg.Connection[Any]) -> None:
    """Durations (last attempt start to finish) of the 8 finished jobs and waits (enqueue to first
    start) of all 11 set to known values: p50/p95/p99 and p50/p95 are their interpolated ranks."""
    rows = conn.execute(
        "SELECT id, finished_at IS NOT NULL FROM pgmq_worker.jobs WHERE queue = 'st_known' ORDER BY msg_id"
    ).fetchall()
    durations_ms = [7.0, 15.0, 30.0, 31.0, 90.0, 120.0, 450.0, 2000.0]
    waits_ms = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 5000.0]
    for n, (job_id, _) in enumerate(rows):
        conn.execute(
            "UPDATE pgmq_worker.jobs SET created_at = started_at - make_interval(secs => %s / 1000.0),"
            " attempt_started_at = CASE WHEN finished_at IS NULL THEN attempt_started_at"
            " ELSE finished_at - make_interval(secs => %s / 1000.0) END WHERE id = %s",
            (waits_ms[n], durations_ms[n % len(durations_ms)], job_id),
        )
    finished = [durations_ms[n % len(durations_ms)] for n, (_, done) in enumerate(rows) if done]
    assert len(finished) == 8
    [known] = queue_stats(conn, queue="st_known", since=timedelta(hours=1))
    assert known.duration_p50_ms == pytest.approx(percentile(finished, 0.5), abs=0.01)
    assert known.duration_p95_ms == pytest.approx(percentile(finished, 0.95), abs=0.01)
    assert known.duration_p99_ms == pytest.approx(percentile(finished, 0.99), abs=0.01)
    assert known.wait_p50_ms == pytest.approx(percentile(waits_ms, 0.5), abs=0.01)
    assert known.wait_p95_ms == pytest.approx(percentile(waits_ms, 0.95), abs=0.01)


@pytest.mark.usefixtures("known_run")
def test_the_window_leaves_out_what_happened_before_it(conn: psycopg.Connection[Any]) -> None:
    """Two successes moved two hours back: counted with --since 3h, not with 1h."""
    conn.execute(
        "UPDATE pgmq_worker.jobs SET finished_at = finished_at - interval '2 hours',"
        " started_at = started_at - interval '2 hours', updated_at = updated_at - interval '2 hours'"
        " WHERE id IN (SELECT id FROM pgmq_worker.jobs WHERE queue = 'st_known' AND status = 'succeeded'"
        " ORDER BY msg_id LIMIT 2)"
    )
    [recent] = queue_stats(conn, queue="st_known", since=timedelta(hours=1))
    [longer] = queue_stats(conn, queue="st_known", since=timedelta(hours=3))
    assert (recent.succeeded, longer.succeeded) == (4, 6)
    with pytest.raises(ValueError, match="positive"):
        queue_stats(conn, since=timedelta(0))
    assert queue_stats(conn, since=timedelta.max) == queue_stats(conn, since=timedelta(days=36_500 * 2))


@pytest.mark.usefixtures("known_run")
def test_the_async_twin_gives_the_same_numbers(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """aqueue_stats (the web process) and queue_stats agree."""

    async def go() -> list[QueueStats]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            return await aqueue_stats(aconn, since=timedelta(hours=1))

    assert asyncio.run(go()) == queue_stats(conn, since=timedelta(hours=1))


def test_stuck_jobs_are_running_ones_whose_lease_passed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Four jobs taken by a worker that then died: one lease passed (visible again), one message
    deleted under its job, one lease still good, one job of a queue since dropped: 3 stuck."""
    pgmq.ensure_queue(conn, "st_stuck")
    pgmq.ensure_queue(conn, "st_dropped")
    for queue, n in (("st_stuck", 3), ("st_dropped", 1)):
        for i in range(n):
            enqueue(conn, queue, {"i": i})

    async def take() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            for queue, n in (("st_stuck", 3), ("st_dropped", 1)):  # read, and run long enough to say so
                taken = await deliveries.read(aconn, queue, 60, n)
                assert len(await deliveries.mark_running(aconn, queue, taken)) == n

    asyncio.run(take())
    visible_now(conn, "st_stuck", 1)
    conn.execute("DELETE FROM pgmq.q_st_stuck WHERE msg_id = 2")
    conn.execute("SELECT pgmq.drop_queue('st_dropped')")
    stats = by_queue(queue_stats(conn, since=timedelta(minutes=5)))
    assert (stats["st_stuck"].stuck, stats["st_dropped"].stuck) == (2, 1)
    assert [r.stuck for r in queue_stats(conn, queue="st_stuck", since=timedelta(minutes=5))] == [2]


def test_failed_webhooks_are_counted_on_their_jobs(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A job whose webhook URL is refused (loopback, not allowed): its two events (running,
    succeeded) count as 2 webhook failures, written by the worker's heartbeat."""

    @handler("st_hooked", registry=reg)
    async def hooked(payload: dict[str, Any], ctx: Context) -> None:
        return None

    pgmq.ensure_queue(conn, "st_hooked")
    enqueue(conn, "st_hooked", {}, webhook_url="http://127.0.0.1:9/hook")
    enqueue(conn, "st_hooked", {})  # no webhook: nothing to fail

    def counted() -> bool:
        total = "SELECT sum(webhook_failures) FROM pgmq_worker.jobs WHERE queue = 'st_hooked'"
        return conn.execute(total).fetchone() == (2,)

    run_until(target, reg, counted, webhook_secret=SECRET, webhook_allow_private=False)
    [hooked_stats] = queue_stats(conn, queue="st_hooked", since=timedelta(hours=1))
    assert (hooked_stats.succeeded, hooked_stats.webhook_failures) == (2, 2)


@pytest.mark.usefixtures("known_run")
def test_the_cli_prints_the_same_numbers(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """`stats --json` prints QueueStats.as_json per queue; the text form one line per queue;
    --queue limits it; an unknown queue and a bad --since are clear errors."""
    env = {"DATABASE_URL": db_url}
    ran = CliRunner().invoke(main, ["stats", "--json", "--since", "90m"], env=env)
    assert ran.exit_code == 0, ran.output
    printed = [json.loads(line) for line in ran.output.splitlines()]
    expected = [r.as_json() for r in queue_stats(conn, since=timedelta(minutes=90))]
    assert printed == expected
    assert {p["queue"] for p in printed} >= {"st_known", "st_other", "st_idle"}
    text = CliRunner().invoke(main, ["stats", "--queue", "st_known"], env=env)
    assert text.exit_code == 0, text.output
    header, line = text.output.splitlines()
    assert header.split()[:4] == ["queue", "ok", "failed", "dead"]
    assert line.split()[:5] == ["st_known", "6", "3", "2", "75%"]
    unknown = CliRunner().invoke(main, ["stats", "--queue", "st_nowhere"], env=env)
    assert unknown.exit_code == 1
    assert "no queue named 'st_nowhere'" in unknown.output
    invalid = CliRunner().invoke(main, ["stats", "--queue", "Not A Queue"], env=env)
    assert invalid.exit_code == 1
    assert "lowercase" in invalid.output
    bad = CliRunner().invoke(main, ["stats", "--since", "0s"], env=env)
    assert bad.exit_code == 2
    assert "Invalid value for '--since'" in bad.output
    assert "positive" in bad.output


STATUSES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
FINISHED = ("succeeded", "dead", "cancelled")
# A row: queue, status, and minutes ago for created, started (None: never), a change after the
# start, the webhook failure (None: none). The window is the last 60 minutes.
ROWS = st.lists(
    st.tuples(
        st.sampled_from(("st_p1", "st_p2")),
        st.sampled_from(STATUSES),
        st.integers(0, 180),
        st.one_of(st.none(), st.integers(0, 180)),
        st.integers(0, 180),
        st.one_of(st.none(), st.integers(0, 180)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_the_index_reads_count_what_the_definition_says(
    conn: psycopg.Connection[Any], rows: list[tuple[str, str, int, int | None, int, int | None]]
) -> None:
    """Random job rows against the module's definitions computed here over all of them: the
    statement reads only the finished-in-the-window and the running or failed rows, and must still
    count exactly these (a queue with no pgmq queue has its row when the window counted any)."""
    conn.execute("DELETE FROM pgmq_worker.jobs")
    expected: dict[str, dict[str, Any]] = {}
    for n, (queue, status, created, started, changed, hook) in enumerate(rows):
        start = None if started is None else min(started, created)  # minutes ago: not before creation
        updated = min(changed, created if start is None else start)
        finished = updated if status in FINISHED else None
        conn.execute(
            "INSERT INTO pgmq_worker.jobs (id, queue, msg_id, status, created_at, started_at,"
            " attempt_started_at, updated_at, finished_at, webhook_failures, webhook_failed_at)"
            " SELECT gen_random_uuid(), %s, %s, %s, now() - make_interval(mins => %s),"
            " now() - make_interval(mins => %s), now() - make_interval(mins => %s),"
            " now() - make_interval(mins => %s), now() - make_interval(mins => %s), %s,"
            " now() - make_interval(mins => %s)",
            (queue, n, status, created, start, start, updated, finished, 0 if hook is None else 1, hook),
        )
        e = expected.setdefault(queue, dict.fromkeys((*FINISHED, "failed"), 0) | {"wait": [], "hooks": 0})
        inside = lambda minutes: minutes is not None and minutes < 60  # noqa: E731
        if status in FINISHED and inside(finished):
            e[status] += 1
        if status == "failed" and inside(updated):
            e["failed"] += 1
        counted = (status in FINISHED and inside(finished)) or (
            status in ("running", "failed") and inside(updated)
        )
        if counted and inside(start):
            e["wait"].append((created - start) * 60.0)
        if counted and inside(hook):
            e["hooks"] += 1
    found = by_queue(queue_stats(conn, since=timedelta(hours=1)))
    for queue, e in expected.items():
        if queue not in found:  # not a pgmq queue here: listed when the window counted something
            assert not any(e[k] for k in (*FINISHED, "failed", "wait", "hooks")), e
            continue
        got = found[queue]
        assert (got.succeeded, got.dead, got.cancelled, got.failed, got.webhook_failures) == (
            e["succeeded"], e["dead"], e["cancelled"], e["failed"], e["hooks"]
        )  # fmt: skip
        if e["wait"]:
            assert got.wait_p50_ms == pytest.approx(percentile(e["wait"], 0.5) * 1000, abs=1.0)
        else:
            assert got.wait_p50_ms is None
