"""Wake-up: polling backs off from busy to idle; inserts notify only while a worker waits."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from db.connect import Target
from queues import pgmq
from tests.support.helpers import captured, make_worker, rows
from worker import Context, Registry, handler
from worker.store import waiters
from worker.wakeup import REPOLL_S, Wakeup, channel


def test_the_wait_starts_short_after_work_and_doubles_to_the_poll_interval() -> None:
    wakeup = Wakeup(poll_interval=1.0)
    assert wakeup.next_wait(found=False) == 1.0  # a fresh worker with nothing: the interval
    assert wakeup.next_wait(found=True) == REPOLL_S
    empty = [wakeup.next_wait(found=False) for _ in range(8)]
    assert empty == [0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0]
    assert wakeup.next_wait(found=True) == REPOLL_S  # work again: short again
    assert Wakeup(poll_interval=0.01).next_wait(found=True) == 0.01  # never longer than the interval


def test_a_wait_ends_on_a_notification_on_stop_or_after_its_interval() -> None:
    """Whichever comes first ends the wait; a notification nobody waited for ends the next one, once."""

    async def elapsed(wait: Any) -> float:
        started = time.monotonic()
        await asyncio.wait_for(wait, 10)
        return time.monotonic() - started

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        wakeup = Wakeup(poll_interval=30.0)
        loop.call_later(0.05, wakeup.notify)
        assert await elapsed(wakeup.wait(stopping)) < 1  # notified while waiting
        wakeup.notify()  # while nobody waits (the worker is reading)
        assert await elapsed(wakeup.wait(stopping)) < 0.05
        with pytest.raises(TimeoutError):  # that notification is spent
            await asyncio.wait_for(wakeup.wait(stopping), 0.2)
        assert 0.15 < await elapsed(Wakeup(poll_interval=0.2).wait(stopping)) < 2  # the interval
        loop.call_later(0.05, stopping.set)
        assert await elapsed(wakeup.wait(stopping)) < 1  # stopped while waiting
        assert await elapsed(wakeup.wait(stopping)) < 0.05  # and every wait after

    asyncio.run(go())


def test_a_polling_worker_picks_up_the_next_message_long_before_its_poll_interval(
    target: Any, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """No LISTEN and a 10 s poll interval: a message sent just after another was handled still starts
    within a fraction of the interval, because the worker looks again soon after finding work."""
    started: dict[str, float] = {}

    @handler("polled", registry=reg)
    async def polled(payload: dict[str, Any], ctx: Context) -> None:
        started[payload["name"]] = time.monotonic()

    pgmq.ensure_queue(conn, "polled")
    pgmq.send(conn, "polled", {"name": "first"})
    worker = make_worker(target, reg, burst=False, listen=False, poll_interval=timedelta(seconds=10))

    async def go() -> float:
        task = asyncio.create_task(worker.run())
        while "first" not in started:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the worker has settled the first and is waiting
        sent = time.monotonic()
        await asyncio.to_thread(pgmq.send, conn, "polled", {"name": "second"})
        while "second" not in started and time.monotonic() - sent < 15:
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 15)
        return started.get("second", float("inf")) - sent

    waited = asyncio.run(go())
    assert waited < 5, f"picked up after {waited:.2f} s: the worker waited out its 10 s poll interval"


# -- insert notifications only while a worker waits (migration 0013) ----------------------------------


def notifications(db_url: str, queue: str, send: Any) -> list[str]:
    """The insert notifications a listener on `queue`'s channel gets while `send()` runs."""
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(queue))))
        send()
        return [n.channel for n in listener.notifies(timeout=0.5, stop_after=1)]


def test_inserts_notify_only_while_a_live_waiter_is_announced(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """No waiter: no NOTIFY (no commit-time lock for producers). A live waiter: NOTIFY. Expired: none."""
    pgmq.ensure_queue(conn, "waited")
    assert pgmq.ensure_insert_trigger(conn, "waited")

    def send() -> None:
        pgmq.send(conn, "waited", {})

    assert notifications(db_url, "waited", send) == []

    async def announce(ttl: float) -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            await waiters.announce_waiting(aconn, "w1", ["waited", "other"], ttl)

    asyncio.run(announce(30))
    assert notifications(db_url, "waited", send) == [channel("waited")]
    conn.execute("UPDATE pgmq_worker.waiters SET until = now() - interval '1 second'")
    assert notifications(db_url, "waited", send) == []
    asyncio.run(announce(30))  # renewed in place: one row per worker and queue
    assert conn.execute("SELECT count(*) FROM pgmq_worker.waiters").fetchone() == (2,)


def test_a_producer_without_access_to_the_worker_schema_can_still_send(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The trigger reads pgmq_worker.waiters as its owner: a role that may only send is not refused."""
    pgmq.ensure_queue(conn, "guarded")
    assert pgmq.ensure_insert_trigger(conn, "guarded")
    role = f"pgmqw_sender_{time.monotonic_ns() % 10**9}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        for statement in (
            "GRANT USAGE ON SCHEMA pgmq TO {}",
            "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA pgmq TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA pgmq TO {}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(role)))
        params = conninfo.conninfo_to_dict(db_url) | {"user": role}
        params.pop("password", None)
        with psycopg.connect(conninfo.make_conninfo(**params), autocommit=True) as sender:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                sender.execute("SELECT count(*) FROM pgmq_worker.waiters")
            msg_id = pgmq.send(sender, "guarded", {"from": role})
        assert [r["msg_id"] for r in rows(conn, "guarded")] == [msg_id]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_idle_listening_worker_announces_itself_and_withdraws_when_it_stops(
    target: Any, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Idle: one live waiter row per queue it serves, and a new message wakes it via NOTIFY well
    before its 10 s poll. Stopped: its rows are gone, so inserts stop notifying."""
    picked: list[float] = []

    @handler("idle_a", registry=reg)
    async def idle_a(payload: dict[str, Any], ctx: Context) -> None:
        picked.append(time.monotonic())

    @handler("idle_b", registry=reg)
    async def idle_b(payload: dict[str, Any], ctx: Context) -> None:
        return None

    for queue in ("idle_a", "idle_b"):
        pgmq.ensure_queue(conn, queue)
    worker = make_worker(target, reg, burst=False, poll_interval=timedelta(seconds=10))
    live = "SELECT queue_table FROM pgmq_worker.waiters WHERE until > now() ORDER BY 1"
    seen: dict[str, Any] = {}

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        while len(conn.execute(live).fetchall()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen["waiting"] = conn.execute(live).fetchall()
        sent = time.monotonic()
        await asyncio.to_thread(pgmq.send, conn, "idle_a", {})
        while not picked and time.monotonic() - sent < 12:
            await asyncio.sleep(0.01)
        seen["latency"] = (picked[0] if picked else float("inf")) - sent
        worker.stop()
        await asyncio.wait_for(task, 15)

    asyncio.run(go())
    assert seen["waiting"] == [("q_idle_a",), ("q_idle_b",)]
    assert seen["latency"] < 5, f"picked up after {seen['latency']:.2f} s: no notification"
    assert conn.execute("SELECT count(*) FROM pgmq_worker.waiters").fetchone() == (0,)


def test_the_announcement_stays_live_under_steady_traffic(
    target: Any, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A message every 10 ms for longer than an announcement lasts: every read finds work, yet the
    worker still waits between messages, so its announcement is renewed and inserts keep notifying."""
    handled: list[int] = []

    @handler("steady", registry=reg)
    async def steady(payload: dict[str, Any], ctx: Context) -> None:
        handled.append(payload["i"])

    pgmq.ensure_queue(conn, "steady")
    poll = 0.3
    worker = make_worker(target, reg, burst=False, poll_interval=timedelta(seconds=poll))
    lasts = 3 * poll + 1.0  # Wakeup.announce_ttl
    live = "SELECT count(*) FROM pgmq_worker.waiters WHERE queue_table = 'q_steady' AND until > now()"
    checks: list[int] = []

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        with psycopg.connect(target.url, autocommit=True) as sender:
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < 2 * lasts:
                await asyncio.to_thread(pgmq.send, sender, "steady", {"i": i})
                i += 1
                if time.monotonic() - started > lasts + poll:
                    checks.append(conn.execute(live).fetchone()[0])
                await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 15)

    asyncio.run(go())
    assert len(handled) > 50
    assert checks and all(n == 1 for n in checks), checks


def test_a_worker_that_may_not_announce_itself_says_so_and_polls(
    db_url: str, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A role without write access to pgmq_worker.waiters: the worker warns once (notify_unavailable)
    and keeps working by polling; the refused announcement is not treated as database trouble."""
    got: list[int] = []

    @handler("unannounced", registry=reg)
    async def unannounced(payload: dict[str, Any], ctx: Context) -> None:
        got.append(payload["n"])

    pgmq.ensure_queue(conn, "unannounced")
    assert pgmq.ensure_insert_trigger(conn, "unannounced")  # installed by the owner beforehand
    role = f"pgmqw_quiet_{time.monotonic_ns() % 10**9}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(role)))
    try:
        for statement in (
            "GRANT USAGE ON SCHEMA pgmq, pgmq_worker TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgmq TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA pgmq TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgmq_worker TO {}",
            "REVOKE ALL ON pgmq_worker.waiters FROM {}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(role)))
        params = conninfo.conninfo_to_dict(db_url) | {"user": role}
        params.pop("password", None)
        as_role = Target(conninfo.make_conninfo(**params), transaction_pooler=False)
        worker = make_worker(as_role, reg, burst=False, poll_interval=timedelta(seconds=0.2))

        async def go() -> None:
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(0.5)  # idle: the announcement was tried and refused
            await asyncio.to_thread(pgmq.send, conn, "unannounced", {"n": 1})
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            worker.stop()
            await asyncio.wait_for(task, 15)

        with captured() as logs:
            asyncio.run(go())
        assert got == [1]
        events = [e["event"] for e in logs]
        assert events.count("worker.notify_unavailable") == 1, events
        assert "worker.database_unavailable" not in events and "worker.stopped" in events
        assert conn.execute("SELECT count(*) FROM pgmq_worker.waiters").fetchone() == (0,)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
