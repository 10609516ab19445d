"""Pausing a queue: no worker of the fleet reads it until it is resumed, and then they all do.

Two workers with pools, listeners and pause sets of their own stand for two machines; one of them
cannot LISTEN (`listen=False`, as behind a transaction pooler), so the poll-interval re-check is
what stops and restarts it. The stated bound (docs/how-to/pause.md) is one poll interval after the
pause's commit; the tests' workers poll every 100 ms and the tests wait well past that.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.connect import Target, aconnect
from queues import enqueue, pgmq
from queues.errors import InvalidQueueName, UnknownQueue
from queues.exporter import QueueGauges
from queues.pauses import InvalidPauseNote, apause, aresume, pause, paused, resume
from tests.integration.test_dashboard import BASE, REMOTE, Clients, clients, csrf_of, local_browser, logged_in
from tests.support.helpers import captured, make_worker, run_burst
from tests.support.roles import login_roles
from web.dashboard.access import CSRF_COOKIE
from worker import Context, Registry, handler
from worker.cli import main
from worker.runner import Worker

POLL = timedelta(milliseconds=100)  # the tests' poll interval (tests/support/helpers.py)
PAST_THE_BOUND_S = 1.0  # ten poll intervals
ORIGIN = {"Origin": BASE}
__all__ = ["clients"]  # the dashboard's fixture, used here


def counted(reg: Registry, queue: str, *, slow: threading.Event | None = None) -> list[Any]:
    """A handler on `queue` that notes each payload; one with `{"slow": true}` waits for `slow`."""
    seen: list[Any] = []

    @handler(queue, registry=reg)
    async def note(payload: dict[str, Any], ctx: Context) -> None:
        if payload.get("slow") and slow is not None:
            while not slow.is_set():
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # long enough for both workers to get some of a batch
        seen.append(payload["n"])

    return seen


def queued(conn: psycopg.Connection[Any], queue: str) -> tuple[int, int]:
    """(messages in the queue, of them ever read)."""
    row = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE read_ct > 0) FROM pgmq.q_{queue}").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def running(workers: list[Worker], act: Callable[[], Awaitable[None]]) -> None:
    """Run the workers (non-burst) while `act` runs; stop them warm after it."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await asyncio.wait_for(act(), 25)
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


def test_a_pause_holds_for_two_workers_and_a_resume_lets_both_drain(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """Paused, neither worker reads new messages (one listens, one only polls); the delivery already
    running finishes; resumed, both read again and the queue drains."""
    reg = Registry()
    slow = threading.Event()
    seen = counted(reg, "held", slow=slow)
    pgmq.ensure_queue(conn, "held")
    workers = [
        make_worker(target, reg, burst=False, concurrency=2, listen=listen) for listen in (True, False)
    ]
    enqueue(conn, "held", {"n": -1, "slow": True})

    async def act() -> None:
        await until(lambda: queued(conn, "held") == (1, 1))  # the slow one is running
        async with await aconnect(target) as aconn:
            await apause(aconn, "held", by="test", reason="maintenance")
        await asyncio.sleep(3 * POLL.total_seconds())  # the stated bound, and then some
        for n in range(30):
            enqueue(conn, "held", {"n": n})
        slow.set()  # in flight when the pause came: it runs to its end
        await asyncio.sleep(PAST_THE_BOUND_S)
        assert seen == [-1]
        assert queued(conn, "held") == (30, 0)  # never read, by either worker
        async with await aconnect(target) as aconn:
            assert await aresume(aconn, "held") is not None
        await until(lambda: len(seen) == 31)

    with captured() as logs:
        asyncio.run(running(workers, act))
    assert sorted(seen) == [-1, *range(30)]
    assert queued(conn, "held") == (0, 0)
    assert all(w.presence.processed > 0 for w in workers), [w.presence.processed for w in workers]
    noticed = [e for e in logs if e["event"] in {"queue.pause_noticed", "queue.resume_noticed"}]
    assert [e["event"] for e in noticed].count("queue.pause_noticed") == 2
    assert [e["event"] for e in noticed].count("queue.resume_noticed") == 2
    assert {e["event"] for e in logs} >= {"queue.paused", "queue.resumed"}


def test_an_idle_worker_stops_asking_a_paused_queue_to_notify(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """An idle, listening worker's waiter rows name only its unpaused queues: inserts into a paused
    queue stop notifying on its account, and a resume brings the row (and the notifications) back."""
    reg = Registry()
    seen = counted(reg, "quiet_a")
    counted(reg, "quiet_b")
    for queue in ("quiet_a", "quiet_b"):
        pgmq.ensure_queue(conn, queue)
    # A 2 s poll: an announcement lasts 7 s and is renewed about every 4.5 s, so a change seen
    # within 3 s is the worker's answer to the pause (its next idle moment), not a renewal.
    poll_s = 2.0
    worker = make_worker(
        target, reg, burst=False, concurrency=2, listen=True, poll_interval=timedelta(seconds=poll_s)
    )

    def waited_on() -> set[str]:
        return {r[0] for r in conn.execute("SELECT queue_table FROM pgmq_worker.waiters").fetchall()}

    async def within(seconds: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, (seconds, waited_on())
            await asyncio.sleep(0.02)

    async def act() -> None:
        await until(lambda: waited_on() == {"q_quiet_a", "q_quiet_b"})
        async with await aconnect(target) as aconn:
            await apause(aconn, "quiet_a", by="test")
        await within(poll_s + 1, lambda: waited_on() == {"q_quiet_b"})
        async with await aconnect(target) as aconn:
            assert await aresume(aconn, "quiet_a") is not None
        await within(poll_s + 1, lambda: waited_on() == {"q_quiet_a", "q_quiet_b"})
        enqueue(conn, "quiet_a", {"n": 1})
        await within(1.0, lambda: seen == [1])  # notified at once: no poll interval's wait

    asyncio.run(running([worker], act))


def test_a_worker_started_while_its_queue_is_paused_does_not_read_it(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """Paused before the worker starts: its first read already skips the queue; its other queue runs."""
    reg = Registry()
    held, free = counted(reg, "held_early"), counted(reg, "free_early")
    for queue in ("held_early", "free_early"):
        pgmq.ensure_queue(conn, queue)
    pause(conn, "held_early", reason="not yet")
    for n in range(5):
        enqueue(conn, "held_early", {"n": n})
        enqueue(conn, "free_early", {"n": n})
    worker = make_worker(target, reg, burst=False)

    async def act() -> None:
        await until(lambda: len(free) == 5)
        await asyncio.sleep(PAST_THE_BOUND_S)
        assert held == [] and queued(conn, "held_early") == (5, 0)
        resume(conn, "held_early")
        await until(lambda: len(held) == 5)

    with captured() as logs:
        asyncio.run(running([worker], act))
    started = next(e for e in logs if e["event"] == "worker.started")
    assert started["paused"] == ["held_early"]


def test_a_burst_run_over_paused_queues_ends_and_leaves_their_messages(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """`run --burst` drains what it may read and exits; a paused queue's messages stay for later."""
    reg = Registry()
    held, free = counted(reg, "held_burst"), counted(reg, "free_burst")
    for queue in ("held_burst", "free_burst"):
        pgmq.ensure_queue(conn, queue)
    pause(conn, "held_burst")
    for n in range(3):
        enqueue(conn, "held_burst", {"n": n})
        enqueue(conn, "free_burst", {"n": n})
    run_burst(target, reg, timeout=10)
    assert held == [] and sorted(free) == [0, 1, 2]
    assert queued(conn, "held_burst") == (3, 0)
    only_paused = Registry()
    counted(only_paused, "held_burst")
    run_burst(target, only_paused, timeout=10)  # nothing it may read: it ends at once
    assert queued(conn, "held_burst") == (3, 0)


def test_pause_and_resume_are_idempotent_and_refuse_what_they_cannot_do(
    conn: psycopg.Connection[Any],
) -> None:
    """Pause twice keeps the first pause; resume of an unpaused queue is None; unknown queues,
    dead-letter queues and bad notes are refused before anything is written; sends go on."""
    pgmq.ensure_queue(conn, "calm")
    first = pause(conn, "calm", by="ops", reason="db upgrade")
    again = pause(conn, "calm", by="someone else", reason="other")
    assert not first.already and again.already and again.pause == first.pause
    assert paused(conn)["calm"].reason == "db upgrade"
    enqueue(conn, "calm", {"n": 1})  # a paused queue still takes messages
    assert queued(conn, "calm") == (1, 0)
    lifted = resume(conn, "calm")
    assert lifted is not None and lifted.paused_by == "ops"
    assert resume(conn, "calm") is None
    with pytest.raises(UnknownQueue):
        pause(conn, "no_such_queue")
    with pytest.raises(UnknownQueue):
        resume(conn, "no_such_queue")
    with pytest.raises(InvalidQueueName):
        pause(conn, "calm_dlq")
    with pytest.raises(InvalidQueueName):
        pause(conn, "Not A Name")
    with pytest.raises(InvalidPauseNote):
        pause(conn, "calm", reason="x" * 501)
    with pytest.raises(InvalidPauseNote):
        pause(conn, "calm", reason="nul\x00")
    assert paused(conn) == {}


def test_the_cli_pauses_and_resumes_and_exits_2_for_bad_input(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`queue pause|resume`: one line (or JSON) saying what happened; a bad queue or reason is exit 2."""
    pgmq.ensure_queue(conn, "cli_q")
    runner = CliRunner()
    env = {"DATABASE_URL": db_url}
    done = runner.invoke(main, ["queue", "pause", "cli_q", "--reason", "deploy"], env=env)
    assert done.exit_code == 0 and done.output.startswith("cli_q: paused by ") and "deploy" in done.output
    again = runner.invoke(main, ["queue", "pause", "cli_q", "--json"], env=env)
    assert again.exit_code == 0 and '"result": "already paused"' in again.output
    listed = runner.invoke(main, ["queues", "--json"], env=env)
    assert '"queue": "cli_q"' in listed.output and '"paused": true' in listed.output
    assert runner.invoke(main, ["queue", "resume", "cli_q"], env=env).output.startswith("cli_q: resumed")
    assert runner.invoke(main, ["queue", "resume", "cli_q"], env=env).output == "cli_q: not paused\n"
    for argv, says in [
        (["queue", "pause", "nope_q"], "no queue 'nope_q'"),
        (["queue", "resume", "nope_q"], "no queue 'nope_q'"),
        (["queue", "pause", "Bad-Name"], "lowercase letters"),
        (["queue", "pause", "cli_q_dlq"], "dead-letter queue"),
        (["queue", "pause", "cli_q", "--reason", "x" * 501], "at most 500"),
    ]:
        bad = runner.invoke(main, argv, env=env)
        assert bad.exit_code == 2 and says in bad.output, (argv, bad.output)
    assert paused(conn) == {}


def test_the_cli_shows_a_reasons_control_characters_escaped(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A reason (or who paused) holding terminal escapes is printed escaped, kept as written."""
    pgmq.ensure_queue(conn, "cli_esc")
    reason = "deploy \x1b[2J\x1b]0;owned\x07 done\r\n"
    pause(conn, "cli_esc", by="ops\x1b[31m", reason=reason)
    out = CliRunner().invoke(main, ["queue", "pause", "cli_esc"], env={"DATABASE_URL": db_url}).output
    assert out.startswith("cli_esc: already paused (paused since ")
    assert out.endswith(" by ops\\x1b[31m: deploy \\x1b[2J\\x1b]0;owned\\x07 done\\x0d\\x0a\n")
    assert paused(conn)["cli_esc"].reason == reason


def test_the_gauge_says_which_queues_are_paused(target: Target, conn: psycopg.Connection[Any]) -> None:
    """pgmq_worker_queue_paused is 1 for a paused queue and 0 for the others."""
    for queue in ("gauge_on", "gauge_off"):
        pgmq.ensure_queue(conn, queue)
    pause(conn, "gauge_on")
    gauges = QueueGauges(target, cache_s=0)
    try:
        families = {m.name: m for m in gauges.collect()}
    finally:
        gauges.close()
    values = {s.labels["queue"]: s.value for s in families["pgmq_worker_queue_paused"].samples}
    assert values == {"gauge_on": 1, "gauge_off": 0}


def test_a_web_role_pauses_and_a_worker_role_only_reads_pauses(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The least-privilege roles (0017): `web` (the dashboard) writes pauses, `worker` reads them,
    `sender` sees none."""
    pgmq.ensure_queue(conn, "roles_q")
    with login_roles(db_url, ["web", "worker", "sender"]) as urls:
        with psycopg.connect(urls["web"], autocommit=True) as web:
            pause(web, "roles_q", by="web")
        with psycopg.connect(urls["worker"], autocommit=True) as worker:
            assert set(paused(worker)) == {"roles_q"}
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                resume(worker, "roles_q")
        with (
            psycopg.connect(urls["sender"], autocommit=True) as sender,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            paused(sender)
        with psycopg.connect(urls["web"], autocommit=True) as web:
            assert resume(web, "roles_q") is not None


# ------------------------------------------------------------------------------------ dashboard


def test_the_dashboard_pauses_and_resumes_a_queue_for_an_admin_with_the_csrf_token(
    clients: Clients, conn: psycopg.Connection[Any]
) -> None:
    """POST /dashboard/queues/pause|resume: 401 without the admin credential, 403 without the CSRF
    token, then a redirect to the Queues page, which shows the queue paused (and its reason)."""
    pgmq.ensure_queue(conn, "dash_q")
    stranger = clients.at(REMOTE)
    csrf = csrf_of(stranger)
    refused = stranger.post("/dashboard/queues/pause", data={"csrf": csrf, "queue": "dash_q"}, headers=ORIGIN)
    assert refused.status_code == 401 and paused(conn) == {}
    browser = logged_in(clients)
    csrf = browser.cookies[CSRF_COOKIE]
    no_token = browser.post("/dashboard/queues/pause", data={"queue": "dash_q"}, headers=ORIGIN)
    assert no_token.status_code == 403 and paused(conn) == {}
    form = {"csrf": csrf, "queue": "dash_q", "reason": "payment provider down"}
    done = browser.post("/dashboard/queues/pause", data=form, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"] == "/dashboard?done=paused"
    assert paused(conn)["dash_q"].paused_by == "dashboard"
    page = browser.get(done.headers["location"]).text
    assert "Queue paused" in page and 'data-testid="paused"' in page and "payment provider down" in page
    assert 'data-testid="resume"' in page
    again = browser.post("/dashboard/queues/pause", data=form, headers=ORIGIN)
    assert again.headers["location"] == "/dashboard?done=already_paused"
    back = browser.post("/dashboard/queues/resume", data={"csrf": csrf, "queue": "dash_q"}, headers=ORIGIN)
    assert back.status_code == 303 and back.headers["location"] == "/dashboard?done=resumed"
    assert paused(conn) == {}
    twice = browser.post("/dashboard/queues/resume", data={"csrf": csrf, "queue": "dash_q"}, headers=ORIGIN)
    assert twice.headers["location"] == "/dashboard?done=not_paused"


@pytest.mark.parametrize(
    ("form", "status", "says"),
    [
        ({"queue": "nope_q"}, 404, "no queue"),
        ({"queue": "Bad-Name"}, 404, "lowercase"),
        ({"queue": "dash_bad_dlq"}, 404, "dead-letter"),
        ({}, 404, "non-empty"),
        ({"queue": "dash_bad", "reason": "x" * 501}, 400, "at most 500"),
        ({"queue": "dash_bad", "reason": "a\x00b"}, 400, "NUL"),
    ],
)
def test_bad_pauses_are_4xx_pages_that_say_why(
    clients: Clients, conn: psycopg.Connection[Any], form: dict[str, str], status: int, says: str
) -> None:
    """An unknown, invalid or dead-letter queue is a 404 page; a bad reason a 400; nothing is paused."""
    pgmq.ensure_queue(conn, "dash_bad")
    browser = logged_in(clients)
    answer = browser.post(
        "/dashboard/queues/pause", data={"csrf": browser.cookies[CSRF_COOKIE], **form}, headers=ORIGIN
    )
    assert answer.status_code == status and says in answer.text, answer.text[-400:]
    assert paused(conn) == {}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queue=st.text(max_size=50), reason=st.text(max_size=600))
def test_any_pause_form_gets_a_redirect_or_a_4xx_never_a_5xx(
    clients: Clients, queue: str, reason: str
) -> None:
    """Whatever the form holds, the pause answers 303, 400 or 404."""
    browser, csrf = local_browser(clients)
    answer = browser.post("/dashboard/queues/pause", data={"csrf": csrf, "queue": queue, "reason": reason})
    assert answer.status_code in (303, 400, 404), (queue, reason, answer.text[-300:])
