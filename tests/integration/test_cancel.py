"""Cancellation end to end: not-started jobs at once, running ones by their worker, never run again.

Workers run in a thread of their own (`running`), so the test cancels as a web process or the CLI
would while a handler is running; webhooks go to a local HTTP server.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.connect import Target, aconnect
from queues import enqueue, pgmq
from queues.cancel import JobFinished, UnknownJob, cancel
from queues.catalog import Catalog
from queues.jobs import get_job
from tests.integration.test_web import read_events, serve
from tests.integration.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.integration.test_webhooks import verified
from tests.support.helpers import captured, make_worker, rows, run_burst, visible_now
from tests.support.roles import login_roles
from tests.support.tokens import SECRET, bearer
from web import create_app
from web.settings import WebSettings
from worker import Context, Registry, handler
from worker.cancels import CancelFlag, JobCancelled
from worker.cli import main
from worker.store import deliveries

ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
Refused = psycopg.errors.InsufficientPrivilege
ADMIN_TOKEN = "admin-token-of-some-thirty-chars"
FAST = {"heartbeat_interval": timedelta(milliseconds=100), "cancel_grace": timedelta(milliseconds=200)}


def status(conn: psycopg.Connection[Any], job_id: Any) -> str:
    job = get_job(conn, job_id)
    assert job is not None
    return job.status


def wait_for(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def while_running(target: Target, reg: Registry, act: Callable[[], None], **settings: Any) -> None:
    """Run a (non-burst) worker while `act` runs in a thread (the worker needs the main thread's
    signals); stop it warm once `act` returns, and raise what `act` raised."""
    worker = make_worker(target, reg, burst=False, **(FAST | settings))

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(asyncio.to_thread(act), 25)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 20)

    asyncio.run(go())


def api(target: Target, **settings: Any) -> TestClient:
    return TestClient(create_app(target, settings=WebSettings(**settings), catalog=Catalog()))


# ---------------------------------------------------------------- not started: at once


def test_a_delayed_and_a_queued_job_end_cancelled_at_once_and_never_run(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Both end `cancelled` now with their messages deleted; a worker past their VT runs nothing."""
    ran: list[int] = []

    @handler("later", registry=reg, visibility_timeout=1)
    async def later(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(payload["n"])

    pgmq.ensure_queue(conn, "later")
    delayed = enqueue(conn, "later", {"n": 1}, delay=60)
    queued = enqueue(conn, "later", {"n": 2})
    for sent in (delayed, queued):
        done = cancel(conn, sent.job_id)
        assert (done.action, done.job.status, done.immediate) == ("cancelled", "cancelled", True)
        assert done.job.finished_at is not None
        assert done.job.error == {"type": "JobCancelled", "message": "cancelled on request"}
    assert rows(conn, "later") == []
    run_burst(target, reg)
    time.sleep(1.2)  # past the visibility timeout: nothing reappears
    run_burst(target, reg)
    assert ran == []
    assert {status(conn, delayed.job_id), status(conn, queued.job_id)} == {"cancelled"}


def test_a_job_waiting_for_its_retry_is_cancelled_at_once(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A failed attempt's job (`failed`, hidden until its backoff) ends `cancelled`, never retried."""
    ran: list[int] = []

    @handler("flaky", registry=reg, max_attempts=3)
    async def flaky(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(ctx.attempt)
        raise RuntimeError("not yet")

    pgmq.ensure_queue(conn, "flaky")
    sent = enqueue(conn, "flaky", {})

    async def one_attempt() -> None:
        worker = make_worker(target, reg, burst=True)
        task = asyncio.create_task(worker.run())
        while not ran:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the failure settles: hidden for its backoff
        worker.stop()
        await task

    asyncio.run(one_attempt())
    assert status(conn, sent.job_id) == "failed"
    assert cancel(conn, sent.job_id).action == "cancelled"
    assert rows(conn, "flaky") == []
    assert ran == [1]


def test_finished_and_unknown_jobs_are_errors(conn: psycopg.Connection[Any]) -> None:
    """A finished job: JobFinished with its status; an unknown id: UnknownJob."""
    pgmq.ensure_queue(conn, "later")
    sent = enqueue(conn, "later", {})
    cancel(conn, sent.job_id)
    with pytest.raises(JobFinished) as finished:
        cancel(conn, sent.job_id)
    assert finished.value.status == "cancelled"
    with pytest.raises(UnknownJob):
        cancel(conn, uuid.uuid4())


# ---------------------------------------------------------------- running: by its worker


@pytest.mark.parametrize("marked", [True, False], ids=["row says running", "row says queued still"])
def test_a_running_async_job_is_stopped_by_its_worker_and_never_run_again(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, marked: bool
) -> None:
    """202 `running`; the handler's task is cancelled (it cleans up), the job ends `cancelled`,
    its message gone, `job.cancelled` logged, and nothing runs it again after its VT. The same in
    a delivery's first moments, before the worker marks its row `running` (running_after): the
    cancel sees the delivery held and marks it rather than deleting its message under it."""
    started, cleaned = threading.Event(), threading.Event()
    runs: list[int] = []

    @handler("long", registry=reg, visibility_timeout=1)
    async def long(payload: dict[str, Any], ctx: Context) -> None:
        runs.append(ctx.attempt)
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cleaned.set()
            raise

    pgmq.ensure_queue(conn, "long")
    sent = enqueue(conn, "long", {})

    def act() -> None:
        assert started.wait(10)
        wait_for(lambda: status(conn, sent.job_id) == ("running" if marked else "queued"))
        with api(target) as client:
            answer = client.post(f"/jobs/{sent.job_id}/cancel")
            assert answer.status_code == 202, answer.text
            assert (answer.json()["status"], answer.json()["attempts"]) == ("running", 1)
            wait_for(lambda: status(conn, sent.job_id) == "cancelled")
            time.sleep(1.3)  # past the visibility timeout
            assert client.post(f"/jobs/{sent.job_id}/cancel").status_code == 409

    running_after = timedelta(milliseconds=50 if marked else 60_000)
    with captured() as logs:
        while_running(target, reg, act, running_after=running_after)
    assert cleaned.is_set()
    assert rows(conn, "long") == []
    assert runs == [1]
    [event] = [e for e in logs if e["event"] == "job.cancelled"]
    assert event["reason"] == "requested" and event["msg_id"] == sent.msg_id
    job = get_job(conn, sent.job_id)
    assert job is not None and job.finished_at is not None and job.error["type"] == "JobCancelled"


def test_a_def_handler_sees_ctx_cancelled_and_ends_cancelled(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A `def` handler polling ctx.cancelled stops; what it returns then is no success."""
    started, saw = threading.Event(), threading.Event()

    @handler("plain", registry=reg)
    def plain(payload: dict[str, Any], ctx: Context) -> str:
        started.set()
        deadline = time.monotonic() + 20
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        saw.set()
        return "partial"

    pgmq.ensure_queue(conn, "plain")
    sent = enqueue(conn, "plain", {})

    def act() -> None:
        assert started.wait(10)
        assert cancel(conn, sent.job_id).action == "requested"
        wait_for(lambda: status(conn, sent.job_id) == "cancelled")

    while_running(target, reg, act)
    assert saw.is_set()
    job = get_job(conn, sent.job_id)
    assert job is not None and job.result is None
    assert rows(conn, "plain") == []


def test_no_step_starts_after_a_cancel(target: Target, conn: psycopg.Connection[Any], reg: Registry) -> None:
    """The step before the cancel is stored; the one after refuses (JobCancelled) and never runs."""
    started = threading.Event()
    ran: list[str] = []
    refused: list[str] = []

    @handler("stepped", registry=reg)
    async def stepped(payload: dict[str, Any], ctx: Context) -> None:
        await ctx.step("first", ran.append, "first")
        started.set()
        while not ctx.cancelled:
            await asyncio.sleep(0.02)
        try:
            await ctx.step("second", ran.append, "second")
        except JobCancelled as exc:
            refused.append(str(exc))
            raise

    pgmq.ensure_queue(conn, "stepped")
    sent = enqueue(conn, "stepped", {})

    def act() -> None:
        assert started.wait(10)
        cancel(conn, sent.job_id)
        wait_for(lambda: status(conn, sent.job_id) == "cancelled")

    while_running(target, reg, act, cancel_grace=timedelta(seconds=10))
    assert ran == ["first"]
    assert refused and "second" in refused[0]
    steps = conn.execute(
        "SELECT name FROM pgmq_worker.job_steps WHERE job_id = %s", (sent.job_id,)
    ).fetchall()
    assert steps == [("first",)]


def test_a_message_of_a_cancelled_job_read_later_is_deleted_not_run(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A worker that crashed holding a job, cancelled meanwhile: the next reader deletes it unrun."""
    ran: list[int] = []

    @handler("crashy", registry=reg)
    async def crashy(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(1)

    pgmq.ensure_queue(conn, "crashy")
    sent = enqueue(conn, "crashy", {})

    async def crashed_read() -> None:  # the worker's own read; then the worker "dies"
        aconn = await aconnect(target)
        async with aconn:
            assert len(await deliveries.read(aconn, "crashy", 30, 1)) == 1

    asyncio.run(crashed_read())
    assert cancel(conn, sent.job_id).action == "requested"  # held: its lease has not run out
    visible_now(conn, "crashy")
    with captured() as logs:
        run_burst(target, reg)
    assert ran == []
    assert rows(conn, "crashy") == []
    assert status(conn, sent.job_id) == "cancelled"
    assert [e["reason"] for e in logs if e["event"] == "job.cancelled"] == ["before_start"]


# ---------------------------------------------------------------- fan-out


def test_cancelling_a_fan_out_parent_cancels_its_children(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """The running child is stopped, the held-back ones never sent; the parent ends `cancelled`."""
    child_started = threading.Event()
    parent_runs: list[int] = []

    @handler("kid", registry=reg)
    async def kid(payload: dict[str, Any], ctx: Context) -> None:
        child_started.set()
        await asyncio.sleep(30)

    @handler("mom", registry=reg)
    async def mom(payload: dict[str, Any], ctx: Context) -> Any:
        parent_runs.append(ctx.attempt)
        batch = await ctx.fan_out("kids", "kid", [{"n": i} for i in range(3)], max_running=1)
        return batch.summary

    for q in ("kid", "mom"):
        pgmq.ensure_queue(conn, q)
    sent = enqueue(conn, "mom", {})

    def act() -> None:
        assert child_started.wait(10)
        wait_for(lambda: status(conn, sent.job_id) == "running" and not rows(conn, "mom")[0]["visible"])
        done = cancel(conn, sent.job_id)
        assert (done.action, done.children) == ("requested", 1)
        wait_for(lambda: status(conn, sent.job_id) == "cancelled")

    while_running(target, reg, act)
    kids = conn.execute(
        "SELECT status FROM pgmq_worker.jobs WHERE parent_id = %s ORDER BY child_index", (sent.job_id,)
    ).fetchall()
    assert kids == [("cancelled",)]  # the two held back were never sent
    assert rows(conn, "kid") == [] and rows(conn, "mom") == []
    assert parent_runs == [1]  # woken by its last child, it was not run again
    pending = conn.execute("SELECT count(*) FROM pgmq_worker.fan_out_pending").fetchone()
    assert pending == (0,)


# ---------------------------------------------------------------- HTTP, SSE, webhook, CLI


def test_http_cancel_answers_200_409_404_and_checks_the_caller(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """Owner 200 then 409 (naming the status); another user 404; an admin may; bad ids 404."""
    pgmq.ensure_queue(conn, "later")
    with api(target, jwt_secret=SECRET, admin_token=ADMIN_TOKEN) as client:
        mine = enqueue(conn, "later", {}, owner=ALICE, delay=60)
        theirs = enqueue(conn, "later", {}, owner=ALICE, delay=60)
        assert client.post(f"/jobs/{mine.job_id}/cancel").status_code == 401
        assert client.post(f"/jobs/{mine.job_id}/cancel", headers=bearer(BOB)).status_code == 404
        answer = client.post(f"/jobs/{mine.job_id}/cancel", headers=bearer(ALICE))
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        again = client.post(f"/jobs/{mine.job_id}/cancel", headers=bearer(ALICE))
        assert again.status_code == 409
        assert (
            again.json()["error"]["code"] == "job_finished"
            and "cancelled" in again.json()["error"]["message"]
        )
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert client.post(f"/jobs/{theirs.job_id}/cancel", headers=admin).status_code == 200
        for bad in (str(uuid.uuid4()), "not-a-uuid", "1", "%00", "x" * 300):
            answer = client.post(f"/jobs/{bad}/cancel", headers=bearer(ALICE))
            assert answer.status_code == 404, (bad, answer.text)
            assert answer.json()["error"]["code"] == "unknown_job"


@pytest.fixture
def open_api(target: Target) -> Iterator[TestClient]:
    with api(target) as client:
        yield client


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=60), body=st.binary(max_size=200))
def test_any_id_or_body_is_a_4xx_never_a_5xx(open_api: TestClient, job_id: str, body: bytes) -> None:
    """Whatever the id segment (percent-encoded, all of Unicode) and body: a JSON 4xx."""
    answer = open_api.post(f"/jobs/{quote(job_id, safe='')}/cancel", content=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert "error" in answer.json()


def test_the_event_stream_sends_cancelled_and_ends(target: Target, conn: psycopg.Connection[Any]) -> None:
    """A stream following a delayed job sends it `queued`, then `cancelled`, then ends."""
    pgmq.ensure_queue(conn, "later")
    sent = enqueue(conn, "later", {}, delay=60)
    app = create_app(target, settings=WebSettings(sse_keepalive=timedelta(seconds=1)), catalog=Catalog())
    found: list[dict[str, Any]] = []
    with serve(app) as url:
        reader = threading.Thread(
            target=lambda: found.extend(read_events(f"{url}/jobs/{sent.job_id}/events"))
        )
        reader.start()
        watching = "SELECT count(*) FROM pgmq_worker.job_watchers WHERE job_id = %s"
        wait_for(lambda: conn.execute(watching, (sent.job_id,)).fetchone() == (1,))
        time.sleep(0.2)  # the stream has read the row after subscribing: it sent `queued`
        cancel(conn, sent.job_id)
        reader.join(15)
        assert not reader.is_alive(), "the stream did not end"
    assert [e["status"] for e in found] == ["queued", "cancelled"]


def test_a_webhook_says_job_cancelled(target: Target, conn: psycopg.Connection[Any], reg: Registry) -> None:
    """A running job's cancel is POSTed as `job.cancelled`, signed, after `job.running`."""
    from tests.integration.test_webhooks import serve as serve_hooks  # noqa: PLC0415

    receiver = serve_hooks()
    started = threading.Event()

    @handler("hooked_long", registry=reg)
    async def hooked_long(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(30)

    try:
        pgmq.ensure_queue(conn, "hooked_long")
        sent = enqueue(conn, "hooked_long", {}, webhook_url=receiver.url)

        def act() -> None:
            assert started.wait(10)
            cancel(conn, sent.job_id)
            wait_for(lambda: len(receiver.received) >= 2)

        while_running(target, reg, act, webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True)
    finally:
        receiver.shutdown()
        receiver.server_close()
    events = sorted((verified(h, b) for h, b in receiver.received), key=lambda e: e["timestamp"])
    assert [e["type"] for e in events] == ["job.running", "job.cancelled"]
    assert events[1]["data"]["status"] == "cancelled" and events[1]["data"]["reason"] == "requested"


def test_the_cli_says_per_id_what_happened_and_fails_for_unknown_ids(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`pgmq-worker cancel` cancels, reports finished ones, and exits 1 for unknown or bad ids."""
    pgmq.ensure_queue(conn, "later")
    a, b = (enqueue(conn, "later", {}, delay=60) for _ in range(2))
    env = {"DATABASE_URL": db_url}
    ok = CliRunner().invoke(main, ["cancel", str(a.job_id)], env=env)
    assert ok.exit_code == 0, ok.output
    assert f"{a.job_id}: cancelled" in ok.output
    unknown = str(uuid.uuid4())
    mixed = CliRunner().invoke(main, ["cancel", str(a.job_id), str(b.job_id), unknown, "nope"], env=env)
    assert mixed.exit_code == 1
    assert "already finished: cancelled" in mixed.output and f"{b.job_id}: cancelled" in mixed.output
    assert f"{unknown}: no such job" in mixed.output and "nope: not a job id" in mixed.output
    assert "2 of 4 JOB_IDs named no job" in mixed.output
    assert status(conn, b.job_id) == "cancelled"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40), min_size=1, max_size=3
    )
)
def test_any_cli_argument_that_is_no_job_exits_1(db_url: str, job_ids: list[str]) -> None:
    """Arbitrary JOB_IDs: exit 1 with a line per id, never a traceback."""
    ran = CliRunner().invoke(main, ["cancel", "--", *job_ids], env={"DATABASE_URL": db_url})
    assert ran.exit_code == 1, ran.output
    assert ran.exception is None or isinstance(ran.exception, SystemExit)
    assert "JOB_IDs named no job" in ran.output


def test_a_test_context_takes_a_cancel_flag() -> None:
    """Context.for_test(cancel=flag): ctx.cancelled, raise_if_cancelled and ctx.step follow the flag."""
    flag = CancelFlag()
    ctx = Context.for_test(cancel=flag)
    assert not ctx.cancelled
    ctx.raise_if_cancelled()
    flag.set()
    assert ctx.cancelled
    with pytest.raises(JobCancelled):
        ctx.raise_if_cancelled()
    with pytest.raises(JobCancelled):
        asyncio.run(ctx.step("later", lambda: 1))


def test_a_web_role_may_cancel_and_a_sender_may_not(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """A role granted `web` may run cancel_job (it cannot delete messages itself); a `sender` may not."""
    pgmq.ensure_queue(conn, "later")
    sent = enqueue(conn, "later", {}, delay=60)
    with login_roles(db_url, ("web", "sender")) as urls:
        with psycopg.connect(urls["sender"], autocommit=True) as sender, pytest.raises(Refused):
            cancel(sender, sent.job_id)
        with psycopg.connect(urls["web"], autocommit=True) as web:
            assert cancel(web, sent.job_id).action == "cancelled"
    assert rows(conn, "later") == []
