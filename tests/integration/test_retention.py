"""Retention: `prune` and the workers' pruner delete old finished rows and archived messages only."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from db.connect import Target
from queues import enqueue, pgmq
from queues.retention import prune
from tests.support.fixtures import BurstWorker
from tests.support.helpers import captured, make_worker
from worker import Context, Registry, handler
from worker.cli import main


def cli(url: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        main,
        list(args),
        env={"DATABASE_URL": url, "PGMQ_WORKER_LOG_LEVEL": "warning", **env},
        catch_exceptions=False,
    )


def count(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def finished_jobs(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker, queue: str, n: int
) -> list[uuid.UUID]:
    """`n` succeeded jobs on `queue` (archived on success), each with a step and an artifact."""
    pgmq.ensure_queue(conn, queue)

    @handler(queue, registry=reg, archive=True)
    async def work(payload: dict[str, Any], ctx: Context) -> int:
        await ctx.step("only", lambda: payload["i"])
        await ctx.artifact("out.txt", b"x", "text/plain")
        return int(payload["i"])

    ids = [enqueue(conn, queue, {"i": i}).job_id for i in range(n)]
    burst_worker(reg)
    assert (
        count(conn, "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = %s AND status = 'succeeded'", queue)
        == n
    )
    return ids


def age(conn: psycopg.Connection[Any], queue: str, job_ids: list[uuid.UUID], days: int) -> None:
    """Make these jobs (and every archived message of the queue) finished `days` ago."""
    conn.execute(
        "UPDATE pgmq_worker.jobs SET finished_at = now() - make_interval(days => %s) WHERE id = ANY(%s)",
        (days, job_ids),
    )
    conn.execute(
        psycopg.sql.SQL("UPDATE pgmq.{} SET archived_at = now() - make_interval(days => %s)").format(
            psycopg.sql.Identifier(f"a_{queue}")
        ),
        (days,),
    )


def test_prune_removes_old_finished_rows_with_their_steps_artifacts_and_archive(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Old finished rows go with their steps and artifacts; recent and unfinished ones stay."""
    ids = finished_jobs(conn, reg, burst_worker, "keep", 6)
    old, recent = ids[:4], ids[4:]
    age(conn, "keep", old, 8)
    assert count(conn, "SELECT count(*) FROM pgmq.a_keep") == 6
    conn.execute(
        "UPDATE pgmq.a_keep SET archived_at = now() WHERE msg_id = (SELECT max(msg_id) FROM pgmq.a_keep)"
    )
    conn.execute("UPDATE pgmq_worker.jobs SET status = 'dead' WHERE id = %s", (old[0],))
    waiting = enqueue(conn, "keep", {"i": 99}).job_id  # queued: never pruned, however old
    conn.execute(
        "UPDATE pgmq_worker.jobs SET created_at = now() - interval '30 days' WHERE id = %s", (waiting,)
    )

    [pruned] = prune(conn, timedelta(days=7), "keep", batch=3)  # more than one batch
    assert (pruned.jobs, pruned.archived) == (4, 5)
    left = {r[0] for r in conn.execute("SELECT id FROM pgmq_worker.jobs WHERE queue = 'keep'").fetchall()}
    assert left == {*recent, waiting}
    assert count(conn, "SELECT count(*) FROM pgmq_worker.job_steps WHERE job_id = ANY(%s)", old) == 0
    assert count(conn, "SELECT count(*) FROM pgmq_worker.job_artifacts WHERE job_id = ANY(%s)", old) == 0
    assert count(conn, "SELECT count(*) FROM pgmq_worker.job_steps WHERE job_id = ANY(%s)", recent) == 2
    assert count(conn, "SELECT count(*) FROM pgmq_worker.job_artifacts WHERE job_id = ANY(%s)", recent) == 2
    assert count(conn, "SELECT count(*) FROM pgmq.a_keep") == 1
    assert prune(conn, timedelta(days=7), "keep") == [type(pruned)("keep", 0, 0)]


def test_prune_cli_reports_per_queue_and_honours_queue(
    db_url: str, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """`prune --older-than 7d --json` prints one object per queue; `--queue` touches that queue alone."""
    a = finished_jobs(conn, reg, burst_worker, "alpha", 2)
    b = finished_jobs(conn, reg, burst_worker, "beta", 3)
    age(conn, "alpha", a, 10)
    age(conn, "beta", b, 10)
    only = cli(db_url, "prune", "--older-than", "7d", "--queue", "alpha", "--json")
    assert only.exit_code == 0, only.output
    assert [json.loads(line) for line in only.stdout.splitlines()] == [
        {"queue": "alpha", "jobs": 2, "archived": 2}
    ]
    assert count(conn, "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'beta'") == 3
    table = cli(db_url, "prune", "--older-than", "7d")
    assert table.exit_code == 0, table.output
    [beta] = [line.split() for line in table.stdout.splitlines() if line.startswith("beta ")]
    assert beta == ["beta", "3", "3"]
    assert table.stdout.splitlines()[-1].split() == ["total", "3", "3"]


def test_prune_uses_the_finished_index(conn: psycopg.Connection[Any]) -> None:
    """prune_jobs' own statement (auto_explain) walks jobs_finished_idx: 20,000 rows, 1% old."""
    conn.execute(
        "INSERT INTO pgmq_worker.jobs (queue, msg_id, status, finished_at) SELECT 'big', g, 'succeeded',"
        " now() - CASE WHEN g % 100 = 0 THEN interval '9 days' ELSE interval '1 hour' END"
        " FROM generate_series(1, 20000) AS g"
    )
    pgmq.ensure_queue(conn, "big")
    conn.execute(
        "INSERT INTO pgmq.a_big (msg_id, read_ct, enqueued_at, archived_at, vt, message) SELECT g, 1, now(),"
        " now() - CASE WHEN g % 100 = 0 THEN interval '9 days' ELSE interval '1 hour' END, now(), '{}'"
        " FROM generate_series(1, 20000) AS g"
    )
    conn.execute("ANALYZE pgmq_worker.jobs")
    conn.execute("ANALYZE pgmq.a_big")
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("LOAD 'auto_explain'")
    [pruned] = prune(conn, timedelta(days=7), "big")
    conn.execute("SET auto_explain.log_min_duration = -1")
    assert (pruned.jobs, pruned.archived) == (200, 200)
    [delete] = [p for p in plans if "DELETE FROM pgmq_worker.jobs" in p][:1]
    assert "jobs_finished_idx" in delete, delete
    assert "Seq Scan" not in delete, delete
    [archive] = [p for p in plans if "DELETE FROM pgmq.a_big" in p][:1]
    assert "Seq Scan" not in archive, archive
    assert "Index Cond: (archived_at <" in archive, archive


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (("prune", "--older-than", "0"), {}, "longer than 0"),
        (("prune", "--older-than", "tomorrow"), {}, "a number with units"),
        (("prune",), {"PGMQ_WORKER_RETENTION": "0"}, "keep everything"),
        (("prune", "--queue", "Bad-Name"), {}, "lowercase"),
    ],
)
def test_bad_prune_input(db_url: str, args: tuple[str, ...], env: dict[str, str], fragment: str) -> None:
    """Bad ages and queue names exit non-zero with a message, and delete nothing."""
    result = cli(db_url, *args, **env)
    assert result.exit_code in {1, 2}, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_the_pruner_runs_in_one_worker_of_two(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Two running workers: one takes the lease and prunes every interval, the other never does."""
    ids = finished_jobs(conn, reg, burst_worker, "fleet", 4)
    age(conn, "fleet", ids[:3], 3)
    policy = {"retention": timedelta(days=2), "retention_interval": timedelta(milliseconds=200)}
    workers = [make_worker(target, reg, burst=False, **policy) for _ in range(2)]

    async def both() -> None:
        tasks = [asyncio.create_task(w.run()) for w in workers]
        for _ in range(200):
            await asyncio.sleep(0.05)
            if sum(w.pruner.passes for w in workers if w.pruner) >= 4:
                break
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    with captured() as logs:
        asyncio.run(both())
    passes = sorted(w.pruner.passes for w in workers if w.pruner)
    assert passes[0] == 0
    assert passes[1] >= 4
    assert [e for e in logs if e["event"] == "retention.pruned"] == [
        {"event": "retention.pruned", "queue": "fleet", "jobs": 3, "archived": 4, "log_level": "info"}
    ]
    assert count(conn, "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'fleet'") == 1
    holder = conn.execute(
        "SELECT holder, last_pruned_at IS NOT NULL FROM pgmq_worker.retention_lease"
    ).fetchone()
    assert holder is not None
    assert holder[1]
    assert holder[0] in {w.pruner.holder for w in workers if w.pruner}


def test_the_pruner_waits_out_a_database_outage(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A refused pass (here: the lease row's table gone) is logged, and the worker runs on."""
    conn.execute("ALTER TABLE pgmq_worker.retention_lease RENAME TO retention_lease_away")
    pgmq.ensure_queue(conn, "calm")

    @handler("calm", registry=reg)
    async def calm(payload: dict[str, Any], ctx: Context) -> None:
        return None

    worker = make_worker(target, reg, burst=False, retention_interval=timedelta(milliseconds=100))

    async def run_a_while() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.0)
        enqueue(conn, "calm", {})
        await asyncio.sleep(0.5)
        worker.stop()
        await asyncio.wait_for(task, 10)

    with captured() as logs:
        asyncio.run(run_a_while())
    assert sum(e["event"] == "retention.failed" for e in logs) >= 2
    assert (
        count(conn, "SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'calm' AND status = 'succeeded'")
        == 1
    )
