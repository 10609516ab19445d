"""Supabase Cron instead of our schedules: the real pg_cron sends with pgmq.send, our worker runs the jobs.

pg_cron 1.4 (Debian bookworm's postgresql-15-cron) schedules by the minute, so the test waits for
the next minute's run: up to a minute and a half.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from db.connect import Target
from db.migrate import migrate
from tests.conftest import install_pgmq_under_test
from tests.support.helpers import run_burst
from tests.support.pg_cron import pg_cron_cluster
from worker import Context, Registry, handler

pytestmark = pytest.mark.slow
QUEUE = "cron_fed"
# The statement the docs show (docs/how-to/schedules.md), as a user would run it on Supabase.
SCHEDULE = """
SELECT cron.schedule(
    'feed-cron-fed',
    '* * * * *',
    $$ SELECT pgmq.send('cron_fed', '{"report": "minutely", "from": "pg_cron"}'::jsonb) $$
)
"""


@pytest.fixture
def cron_url() -> Iterator[str]:
    """A cluster of the test's own with pg_cron, pgmq (the version under test) and our migrations."""
    with pg_cron_cluster() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            install_pgmq_under_test(conn)
            migrate(conn)
            conn.execute("CREATE EXTENSION pg_cron")
            conn.execute("SELECT pgmq.create(%s)", (QUEUE,))
        yield url


def wait_for_message(conn: psycopg.Connection[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM pgmq.q_cron_fed").fetchone()
        if row is not None and row[0] > 0:
            return
        time.sleep(0.5)
    runs = conn.execute("SELECT status, return_message FROM cron.job_run_details").fetchall()
    pytest.fail(f"pg_cron sent nothing within {timeout}s; its runs: {runs}")


@pytest.mark.timeout(180)
def test_pg_cron_feeds_the_worker(cron_url: str) -> None:
    """A cron.schedule'd pgmq.send lands in the queue and a worker runs it like any other message."""
    seen: list[tuple[dict[str, Any], Any]] = []
    reg = Registry()

    @handler(QUEUE, registry=reg)
    async def report(payload: dict[str, Any], ctx: Context) -> str:
        seen.append((payload, ctx.scheduled_at))
        return "done"

    with psycopg.connect(cron_url, autocommit=True) as conn:
        conn.execute(SCHEDULE)
        wait_for_message(conn, timeout=90)
        conn.execute("SELECT cron.unschedule('feed-cron-fed')")
        run_burst(Target(cron_url, transaction_pooler=False), reg, timeout=60)
        jobs = conn.execute(
            "SELECT status, result FROM pgmq_worker.jobs WHERE queue = %s", (QUEUE,)
        ).fetchall()
        runs = conn.execute("SELECT status FROM cron.job_run_details").fetchall()
    assert seen and all(p == {"report": "minutely", "from": "pg_cron"} for p, _ in seen)
    assert all(at is None for _, at in seen)  # not one of our schedules' ticks
    assert jobs and all(j == ("succeeded", "done") for j in jobs)
    assert ("succeeded",) in runs
