"""Schedules against real Postgres: one message per tick however many workers, catch-up, ctx.scheduled_at."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from db.connect import Target, async_pool
from queues import enqueue, pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import make_worker
from worker import Context, Registry, handler, schedule
from worker.cli import main
from worker.scheduler import Scheduler
from worker.schedules import CatchUp, Schedule

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "examples"


def tick_rows(conn: psycopg.Connection[Any], name: str) -> list[tuple[datetime, int | None, Any]]:
    """(tick, msg_id, job_id) of a schedule's tick rows, oldest first."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT tick, msg_id, job_id FROM pgmq_worker.schedule_ticks WHERE schedule = %s ORDER BY tick",
            (name,),
        ).fetchall()
    ]


def scheduled(reg: Registry, queue: str, seen: list[Any], *, job_rows: bool = True) -> None:
    """A handler on `queue` that notes each delivery's (msg_id, ctx.scheduled_at)."""

    @handler(queue, registry=reg, job_rows=job_rows)
    async def note(payload: dict[str, Any], ctx: Context) -> None:
        seen.append((ctx.msg_id, ctx.scheduled_at, payload))


async def one_pass(target: Target, reg: Registry, now: datetime, **kwargs: Any) -> Scheduler:
    """One scheduler pass over the registry's schedules at a fixed `now` (a pretend clock)."""
    pool = async_pool(target, min_size=1, max_size=2)
    await pool.open()
    try:
        scheduler = Scheduler(pool, reg.schedules(), reg.keeps_job_rows, reconnect_max_s=1, clock=lambda: now)
        await scheduler.tick_all()
        return scheduler
    finally:
        await pool.close()


def pretend_ran(conn: psycopg.Connection[Any], declared: Schedule, tick: datetime) -> None:
    """Record that a worker sent `tick` once (the downtime starts after it)."""
    conn.execute(
        "INSERT INTO pgmq_worker.schedule_ticks (schedule, tick, queue) VALUES (%s, %s, %s)",
        (declared.name, tick, declared.queue),
    )


def test_two_workers_send_one_message_per_tick(
    conn: psycopg.Connection[Any], target: Target, reg: Registry
) -> None:
    """Two workers serving an every-second schedule for ~4 s: one job per tick, each with its tick."""
    seen: list[Any] = []
    scheduled(reg, "sched_two", seen)
    schedule("sched_two", "* * * * * *", payload={"n": 1}, name="two", registry=reg)
    pgmq.ensure_queue(conn, "sched_two")

    async def go() -> None:
        workers = [make_worker(target, reg, burst=False) for _ in range(2)]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        await asyncio.sleep(4.3)
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    asyncio.run(go())
    ticks = tick_rows(conn, "two")
    assert len(ticks) >= 3
    instants = [t for t, _, _ in ticks]
    assert instants == sorted(set(instants))
    assert all((b - a) == timedelta(seconds=1) for a, b in itertools.pairwise(instants))
    assert all(msg_id is not None and job_id is not None for _, msg_id, job_id in ticks)
    jobs = conn.execute(
        "SELECT t.tick, count(j.id) FROM pgmq_worker.schedule_ticks AS t"
        " JOIN pgmq_worker.jobs AS j ON j.id = t.job_id AND j.queue = t.queue AND j.msg_id = t.msg_id"
        " WHERE t.schedule = 'two' GROUP BY t.tick"
    ).fetchall()
    assert sorted(r[0] for r in jobs) == instants and all(r[1] == 1 for r in jobs)
    every_job = conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE queue = 'sched_two'").fetchone()
    assert every_job == (len(ticks),)  # no message beyond one per tick
    # Handled: each by its tick (a message sent just before the stop may still wait in the queue).
    ran = {msg_id: at for msg_id, at, _ in seen}
    assert len(ran) == len(seen)  # no delivery twice
    by_msg = {msg_id: tick for tick, msg_id, _ in ticks}
    assert len(ran) >= len(ticks) - 1
    for msg_id, at in ran.items():
        assert at == by_msg[msg_id]
        assert at.tzinfo is not None


@pytest.mark.parametrize(
    ("catch_up", "expected_hours"),
    [("latest", [10]), ("none", []), (timedelta(hours=3), [8, 9, 10])],
)
def test_catch_up_after_a_downtime(
    conn: psycopg.Connection[Any],
    target: Target,
    reg: Registry,
    burst_worker: BurstWorker,
    catch_up: CatchUp,
    expected_hours: list[int],
) -> None:
    """Hourly, last run at T0, every worker down ten hours: the policy picks the ticks sent."""
    seen: list[Any] = []
    scheduled(reg, "sched_down", seen)
    hourly = schedule("sched_down", "0 * * * *", name="hourly", catch_up=catch_up, registry=reg)
    pgmq.ensure_queue(conn, "sched_down")
    pretend_ran(conn, hourly, T0)
    asyncio.run(one_pass(target, reg, T0 + timedelta(hours=10, minutes=20)))
    sent = [t for t, msg_id, _ in tick_rows(conn, "hourly") if msg_id is not None]
    assert sent == [T0 + timedelta(hours=h) for h in expected_hours]
    burst_worker(reg)
    assert sorted(at for _, at, _ in seen) == sent


def test_a_new_schedule_runs_no_tick_from_before_it_existed(
    conn: psycopg.Connection[Any], target: Target, reg: Registry
) -> None:
    """No tick recorded yet: the first pass sends nothing (the 03:00 job deployed at 14:00 waits)."""
    scheduled(reg, "sched_new", [])
    schedule("sched_new", "0 3 * * *", name="nightly", registry=reg)
    pgmq.ensure_queue(conn, "sched_new")
    asyncio.run(one_pass(target, reg, T0 + timedelta(hours=2)))
    assert tick_rows(conn, "nightly") == []


def test_a_tick_another_worker_sent_is_not_sent_again(
    conn: psycopg.Connection[Any], target: Target, reg: Registry
) -> None:
    """Two schedulers at the same moment and a third a little late (clock behind): one message."""
    scheduled(reg, "sched_race", [])
    every = schedule("sched_race", "*/10 * * * * *", name="race", registry=reg)
    pgmq.ensure_queue(conn, "sched_race")
    pretend_ran(conn, every, T0)

    async def three() -> None:
        at = T0 + timedelta(seconds=10, milliseconds=5)
        await asyncio.gather(*(one_pass(target, reg, at) for _ in range(2)))
        await one_pass(target, reg, at + timedelta(milliseconds=700))

    asyncio.run(three())
    ticks = tick_rows(conn, "race")
    assert [t for t, _, _ in ticks] == [T0, T0 + timedelta(seconds=10)]
    assert pgmq.metrics(conn, "sched_race").depth == 1


def test_scheduled_at_reaches_a_queue_without_job_rows_in_the_schedules_timezone(
    conn: psycopg.Connection[Any], target: Target, reg: Registry, burst_worker: BurstWorker
) -> None:
    """job_rows=False: the tick still reaches ctx.scheduled_at (from the tick row), in its zone."""
    seen: list[Any] = []
    scheduled(reg, "sched_plain", seen, job_rows=False)
    daily = schedule(
        "sched_plain", "30 2 * * *", name="berlin", timezone="Europe/Berlin", payload={"a": 1}, registry=reg
    )
    pgmq.ensure_queue(conn, "sched_plain")
    pretend_ran(conn, daily, datetime(2026, 3, 28, 1, 30, tzinfo=UTC))
    asyncio.run(one_pass(target, reg, datetime(2026, 3, 29, 1, 0, 30, tzinfo=UTC)))  # 03:00:30 CEST
    ticks = tick_rows(conn, "berlin")
    assert ticks[-1][2] is None  # no job row for this queue
    burst_worker(reg)
    [(_, at, payload)] = seen
    assert payload == {"a": 1}  # the payload as declared: the tick travels beside it
    assert at.isoformat() == "2026-03-29T03:00:00+02:00"
    assert at.tzinfo == ZoneInfo("Europe/Berlin")


def test_scheduled_at_is_none_for_a_message_no_schedule_sent(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """On a scheduled queue, an ordinary enqueue (or pgmq.send) gets ctx.scheduled_at None."""
    seen: list[Any] = []
    scheduled(reg, "sched_mixed", seen)
    schedule("sched_mixed", "0 3 * * *", registry=reg)
    pgmq.ensure_queue(conn, "sched_mixed")
    enqueue(conn, "sched_mixed", {"x": 1})
    pgmq.send(conn, "sched_mixed", {"x": 2})
    burst_worker(reg)
    assert sorted(p["x"] for _, _, p in seen) == [1, 2]
    assert all(at is None for _, at, _ in seen)


def test_old_ticks_are_pruned_and_the_newest_kept(
    conn: psycopg.Connection[Any], target: Target, reg: Registry
) -> None:
    """Ticks older than a day go at the scheduler's prune; the newest row always stays."""
    scheduled(reg, "sched_prune", [])
    hourly = schedule("sched_prune", "0 * * * *", name="prune", registry=reg)
    pgmq.ensure_queue(conn, "sched_prune")
    for h in range(0, 72, 12):
        pretend_ran(conn, hourly, T0 + timedelta(hours=h))

    async def prune_at(now: datetime) -> None:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        try:
            await Scheduler(
                pool, [hourly], reg.keeps_job_rows, reconnect_max_s=1, clock=lambda: now
            )._prune_if_due()
        finally:
            await pool.close()

    asyncio.run(prune_at(T0 + timedelta(hours=80)))
    assert [t for t, _, _ in tick_rows(conn, "prune")] == [T0 + timedelta(hours=60)]


def test_the_schedules_command_lists_last_and_next_tick(conn: psycopg.Connection[Any], db_url: str) -> None:
    """`pgmq-worker schedules --json`: name, queue, cron, timezone, the last tick sent, the next."""
    conn.execute(
        "INSERT INTO pgmq_worker.schedule_ticks (schedule, tick, queue)"
        " VALUES ('every-second', %s, 'sched_every')",
        (T0,),
    )
    env = {"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_LEVEL": "warning"}
    result = CliRunner().invoke(
        main,
        ["schedules", "--import", "tests.support.schedule_handlers", "--json"],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert row["name"] == "every-second" and row["queue"] == "sched_every" and row["cron"] == "* * * * * *"
    assert row["timezone"] == "UTC" and row["catch_up"] == "latest"
    assert row["last_tick"] == T0.isoformat()
    assert datetime.fromisoformat(row["next_tick"]) > datetime.now(UTC) - timedelta(seconds=1)
    table = CliRunner().invoke(main, ["schedules", "--import", "tests.support.schedule_handlers"], env=env)
    assert table.exit_code == 0 and "every-second" in table.output and T0.isoformat() in table.output


def test_the_schedules_command_with_a_bad_schedule_is_one_line(
    db_url: str, tmp_path: Any, monkeypatch: Any
) -> None:
    """A module whose schedule cannot work: `Error: ...` naming it, exit 1, no traceback."""
    (tmp_path / "bad_sched_mod.py").write_text(
        "from worker import schedule\nschedule('q', '0 3 * *', name='broken')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(
        main, ["schedules", "--import", "bad_sched_mod"], env={"DATABASE_URL": db_url}
    )
    assert result.exit_code == 1
    assert "Error: " in result.output and "'broken'" in result.output and "Traceback" not in result.output


def test_the_docs_example_declares_and_runs_its_schedules(
    conn: psycopg.Connection[Any], target: Target, monkeypatch: pytest.MonkeyPatch, burst_worker: BurstWorker
) -> None:
    """docs/how-to/examples/nightly.py: two schedules found by from_modules; a tick's report names the day."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    reg = Registry.from_modules(["nightly"])
    assert [(s.name, s.queue, s.timezone) for s in reg.schedules()] == [
        ("nightly-report", "reports", "Europe/Berlin"),
        ("sweep", "sweeps", "UTC"),
    ]
    [nightly] = reg.schedules("reports")
    for queue in reg.queues():
        pgmq.ensure_queue(conn, queue)
    tick = datetime(2026, 12, 1, 2, tzinfo=UTC)  # 03:00 in Berlin
    pretend_ran(conn, nightly, tick - timedelta(days=1))
    asyncio.run(one_pass(target, reg, tick + timedelta(seconds=1)))
    burst_worker(reg, queues=("reports",))
    [result] = conn.execute("SELECT result FROM pgmq_worker.jobs WHERE queue = 'reports'").fetchone() or [
        None
    ]
    assert result == {"kind": "nightly", "day": "2026-11-30"}


@pytest.mark.parametrize("job_rows", [True, False])
def test_a_tick_for_a_missing_queue_is_logged_and_rolled_back(
    conn: psycopg.Connection[Any], target: Target, reg: Registry, job_rows: bool
) -> None:
    """No such queue (dropped under the worker): schedule.send_failed, no tick row, the pass goes on."""
    scheduled(reg, "sched_gone", [], job_rows=job_rows)
    every = schedule("sched_gone", "*/10 * * * * *", name="gone", registry=reg)
    pretend_ran(conn, every, T0)
    with capture_logs() as logs:
        scheduler = asyncio.run(one_pass(target, reg, T0 + timedelta(seconds=10, milliseconds=5)))
    assert scheduler.sent == 0
    assert [t for t, _, _ in tick_rows(conn, "gone")] == [T0]  # the claim rolled back with the send
    [failed] = [e for e in logs if e["event"] == "schedule.send_failed"]
    assert failed["schedule"] == "gone" and "sched_gone" in failed["error"]


def test_a_worker_that_stalled_starts_again_from_the_newest_tick_sent(
    conn: psycopg.Connection[Any], target: Target, reg: Registry
) -> None:
    """Stalled for a day and more while others sent and pruned: no tick is sent twice, the newest runs."""
    scheduled(reg, "sched_stall", [])
    hourly = schedule("sched_stall", "0 * * * *", name="stall", catch_up=timedelta(days=7), registry=reg)
    pgmq.ensure_queue(conn, "sched_stall")
    pretend_ran(conn, hourly, T0)
    now = [T0 + timedelta(hours=1, minutes=5)]

    async def go() -> None:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        try:
            stalled = Scheduler(pool, [hourly], reg.keeps_job_rows, reconnect_max_s=1, clock=lambda: now[0])
            await stalled.tick_all()  # sends T0 + 1 h
            for h in range(2, 31):  # meanwhile the other workers send hours 2..30
                pretend_ran(conn, hourly, T0 + timedelta(hours=h))
            now[0] = T0 + timedelta(hours=31, minutes=5)
            await stalled._prune_if_due()  # a day kept: hours 2..6 go
            await stalled.tick_all()
        finally:
            await pool.close()

    asyncio.run(go())
    sent = [t for t, msg_id, _ in tick_rows(conn, "stall") if msg_id is not None]
    assert sent == [T0 + timedelta(hours=31)]  # hour 1 went with its row at the prune; none again
    assert pgmq.metrics(conn, "sched_stall").depth == 2  # hour 1's message and hour 31's
