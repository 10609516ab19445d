"""The run loop against real Postgres + pgmq: ack, retry, dead-letter, leases, shutdown, wake-up."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql
from pydantic import BaseModel

from db.connect import Target
from queues import pgmq
from queues.names import dlq_name
from tests.support.fixtures import BurstWorker
from tests.support.helpers import Peak, captured, dead, make_worker, rows, run_burst, send, stop_once_started
from worker import Backoff, Context, Permanent, Registry, Retry, handler

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


class Greeting(BaseModel):
    name: str
    times: int = 1


def test_handler_gets_its_model_and_the_message_is_deleted(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A message whose handler returns is deleted; the handler sees its pydantic model and context."""
    seen: list[tuple[Greeting, Context]] = []

    @handler("greet", registry=reg)
    async def greet(payload: Greeting, ctx: Context) -> str:
        seen.append((payload, ctx))
        return f"hello {payload.name}"

    [msg_id] = send(conn, "greet", {"name": "ada", "times": 2})
    with captured() as logs:
        burst_worker(reg)
    assert rows(conn, "greet") == []
    assert dead(conn, "greet") == []
    [(payload, ctx)] = seen
    assert payload == Greeting(name="ada", times=2)
    assert (ctx.queue, ctx.msg_id, ctx.attempt, ctx.max_attempts) == ("greet", msg_id, 1, 5)
    assert ctx.idempotency_key == f"greet:{msg_id}"
    events = [e["event"] for e in logs]
    assert events.count("job.started") == 1
    assert events.count("job.succeeded") == 1
    succeeded = next(e for e in logs if e["event"] == "job.succeeded")
    assert succeeded["queue"] == "greet" and succeeded["msg_id"] == msg_id
    assert succeeded["duration_ms"] >= 0


def test_sync_handler_runs_off_the_event_loop_and_gets_a_dict(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A `def` handler runs in a worker thread; without a model annotation it gets the JSON dict."""
    threads: list[str] = []
    payloads: list[Any] = []

    @handler("plain", registry=reg)
    def plain(payload, ctx):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        payloads.append(payload)

    send(conn, "plain", {"a": [1, 2]})
    burst_worker(reg)
    assert payloads == [{"a": [1, 2]}]
    assert threads[0].startswith("handler")
    assert rows(conn, "plain") == []


def test_messages_sent_with_plain_sql_are_processed(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Any client's `select pgmq.send(...)` is processed like ours."""
    got: list[Greeting] = []

    @handler("greet", registry=reg)
    async def greet(payload: Greeting, ctx: Context) -> None:
        got.append(payload)

    pgmq.ensure_queue(conn, "greet")
    conn.execute("""SELECT pgmq.send('greet', '{"name": "from sql"}'::jsonb)""")
    conn.execute("""SELECT pgmq.send_batch('greet', ARRAY['{"name": "b1"}', '{"name": "b2"}']::jsonb[])""")
    burst_worker(reg)
    assert sorted(g.name for g in got) == ["b1", "b2", "from sql"]
    assert rows(conn, "greet") == []
    # The read made their job rows, with distinct time-ordered ids (queues.ids).
    jobs = conn.execute("SELECT id, status FROM pgmq_worker.jobs WHERE queue = 'greet'").fetchall()
    assert len({j[0] for j in jobs}) == 3
    assert {(j[0].version, j[1]) for j in jobs} == {(7, "succeeded")}


def test_a_failing_handler_is_retried_then_dead_lettered_with_its_error(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A handler that raises is retried with backoff, and after max_attempts parks in <queue>_dlq."""
    attempts: list[int] = []

    @handler("flaky", registry=reg, max_attempts=3, backoff=FAST)
    async def flaky(payload: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ValueError(f"boom {ctx.attempt}")

    [msg_id] = send(conn, "flaky", {"n": 1})
    with captured() as logs:
        burst_worker(reg)
    assert attempts == [1, 2, 3]
    assert rows(conn, "flaky") == []
    [record] = dead(conn, "flaky")
    assert record["queue"] == "flaky"
    assert record["msg_id"] == msg_id
    assert record["payload"] == {"n": 1}
    assert record["attempts"] == 3
    assert record["max_attempts"] == 3
    assert record["reason"] == "max_attempts"
    assert record["error"]["type"] == "ValueError"
    assert record["error"]["message"] == "boom 3"
    assert "raise ValueError" in record["error"]["traceback"]
    assert record["enqueued_at"] and record["dead_lettered_at"]
    events = [e["event"] for e in logs]
    assert events.count("job.retry_scheduled") == 2
    assert events.count("job.dead_lettered") == 1


def test_a_retry_becomes_visible_only_after_the_backoff_delay(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """After a failure the message stays invisible for the backoff delay, then is retried and succeeds."""
    calls: list[float] = []

    @handler("later", registry=reg, backoff=Backoff(base=1.5, jitter=0))
    async def later(payload: dict[str, Any], ctx: Context) -> None:
        calls.append(time.monotonic())
        if ctx.attempt == 1:
            raise RuntimeError("not yet")

    send(conn, "later", {})
    burst_worker(reg)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 1.4
    assert rows(conn, "later") == []


def test_retry_exception_sets_its_own_delay(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Raising Retry(delay) schedules the next attempt after that delay, not the backoff."""
    calls: list[float] = []

    @handler("snooze", registry=reg, backoff=Backoff(base=30, jitter=0))
    async def snooze(payload: dict[str, Any], ctx: Context) -> None:
        calls.append(time.monotonic())
        if ctx.attempt == 1:
            raise Retry(timedelta(milliseconds=700), "rate limited")

    send(conn, "snooze", {})
    burst_worker(reg, timeout=20)
    assert len(calls) == 2
    assert 0.6 <= calls[1] - calls[0] < 10


def test_permanent_error_dead_letters_at_once(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Permanent skips the remaining attempts."""
    calls: list[int] = []

    @handler("doomed", registry=reg, max_attempts=5)
    async def doomed(payload: dict[str, Any], ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise Permanent("document was deleted")

    send(conn, "doomed", {"id": 7})
    burst_worker(reg)
    assert calls == [1]
    [record] = dead(conn, "doomed")
    assert record["reason"] == "permanent"
    assert record["error"] == {
        "type": "Permanent",
        "message": "document was deleted",
        "traceback": record["error"]["traceback"],
    }


@pytest.mark.parametrize("job_rows", [True, False])
def test_a_result_json_cannot_hold_dead_letters_that_delivery_alone(
    conn: psycopg.Connection[Any], job_rows: bool, reg: Registry, burst_worker: BurstWorker
) -> None:
    """NaN or Infinity in a result (jsonb refuses them) dead-letters that delivery at once; the
    batch it would have been acked with is acked, not held back or retried."""
    calls: list[int] = []

    @handler("scores", registry=reg, max_attempts=5, job_rows=job_rows)
    async def score(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        calls.append(payload["n"])
        return {"n": payload["n"], "score": float("nan") if payload["n"] == 3 else 0.5}

    for n in range(6):
        send(conn, "scores", {"n": n})
    burst_worker(reg)
    assert sorted(calls) == list(range(6))  # each ran once: nothing was retried
    assert rows(conn, "scores") == []
    [record] = dead(conn, "scores")
    assert record["reason"] == "invalid_result"
    assert record["payload"] == {"n": 3}
    assert record["error"]["type"] == "InvalidResult"
    assert "NaN" in record["error"]["message"]
    if job_rows:
        statuses = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE queue = 'scores' ORDER BY status")
        assert [s for (s,) in statuses] == ["dead"] + ["succeeded"] * 5


@pytest.mark.parametrize(
    "raw",
    [
        """'{"name": 5}'::jsonb""",  # fails the model
        """'{"nom": "x"}'::jsonb""",  # missing field
        """'[1, 2, 3]'::jsonb""",  # not an object
        """'"just a string"'::jsonb""",
        "'null'::jsonb",
    ],
)
def test_a_poison_message_goes_straight_to_the_dead_letter_queue(
    conn: psycopg.Connection[Any], raw: str, reg: Registry, burst_worker: BurstWorker
) -> None:
    """A payload that is not a JSON object, or fails validation, is dead-lettered uncalled, unretried."""
    calls: list[Any] = []

    @handler("greet", registry=reg, max_attempts=5)
    async def greet(payload: Greeting, ctx: Context) -> None:
        calls.append(payload)

    pgmq.ensure_queue(conn, "greet")
    conn.execute(f"SELECT pgmq.send('greet', {raw})")
    burst_worker(reg)
    assert calls == []
    assert rows(conn, "greet") == []
    [record] = dead(conn, "greet")
    assert record["reason"] == "invalid_payload"
    assert record["attempts"] == 1
    assert record["error"]["type"] == "InvalidPayload"
    assert "greet" in record["error"]["message"]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_handler_past_its_timeout_is_retried_then_dead_lettered(
    conn: psycopg.Connection[Any], kind: str, reg: Registry, burst_worker: BurstWorker
) -> None:
    """An attempt that runs past `timeout` fails with AttemptTimeout and is retried."""
    attempts: list[int] = []

    if kind == "async":

        @handler("slow", registry=reg, timeout=0.3, max_attempts=2, backoff=FAST)
        async def slow(payload: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            await asyncio.sleep(5)

    else:

        @handler("slow", registry=reg, timeout=0.3, max_attempts=2, backoff=FAST)
        def slow_sync(payload: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            time.sleep(0.6)

    send(conn, "slow", {})
    started = time.monotonic()
    burst_worker(reg)
    assert attempts == [1, 2]
    assert time.monotonic() - started < 4.5
    [record] = dead(conn, "slow")
    assert record["error"]["type"] == "AttemptTimeout"
    assert "0.3s" in record["error"]["message"]


def test_a_handlers_own_timeout_error_is_an_ordinary_failure(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A TimeoutError raised inside the handler is not mistaken for the attempt timeout."""

    @handler("inner", registry=reg, timeout=30, max_attempts=1)
    async def inner(payload: dict[str, Any], ctx: Context) -> None:
        raise TimeoutError("upstream took too long")

    send(conn, "inner", {})
    burst_worker(reg)
    [record] = dead(conn, "inner")
    assert record["error"]["type"] == "TimeoutError"
    assert record["error"]["message"] == "upstream took too long"


def test_a_message_delivered_more_than_max_attempts_is_dead_lettered_without_running(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Deliveries that never settled (the handler killed its process) count: past max_attempts it parks."""
    calls: list[int] = []

    @handler("crashy", registry=reg, max_attempts=2)
    async def crashy(payload: dict[str, Any], ctx: Context) -> None:
        calls.append(ctx.attempt)

    [msg_id] = send(conn, "crashy", {"x": 1})
    for _ in range(2):  # two deliveries whose worker died: read, never settled, visible again
        conn.execute("SELECT * FROM pgmq.read('crashy', 0, 1)")
    burst_worker(reg)
    assert calls == []
    [record] = dead(conn, "crashy")
    assert record["reason"] == "crashed"
    assert record["attempts"] == 3
    assert record["msg_id"] == msg_id
    assert record["error"]["type"] == "AttemptsExhausted"


def test_the_lease_is_renewed_while_a_long_handler_runs(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A handler running past its visibility timeout keeps the message invisible to other readers."""
    stolen: list[Any] = []

    @handler("long", registry=reg, visibility_timeout=2)
    async def long(payload: dict[str, Any], ctx: Context) -> None:
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            # Another reader, as a second worker would: it must find nothing.
            with psycopg.connect(target.url, autocommit=True) as other:
                stolen.extend(other.execute("SELECT msg_id FROM pgmq.read('long', 2, 1)").fetchall())
            await asyncio.sleep(0.25)

    send(conn, "long", {})
    burst_worker(reg, timeout=30)
    assert stolen == []
    assert rows(conn, "long") == []
    assert dead(conn, "long") == []


def test_a_worker_that_lost_its_lease_does_not_ack_the_new_delivery(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """If another worker took the message, the first one's ack must not delete that delivery."""
    taken = threading.Event()

    @handler("contended", registry=reg, visibility_timeout=30)
    def contended(payload: dict[str, Any], ctx: Context) -> None:
        # Simulate an expired lease re-read elsewhere: make it visible and read it again.
        # In one transaction, so this worker's own polling cannot take it in between.
        with psycopg.connect(target.url, autocommit=True) as other, other.transaction():
            other.execute("UPDATE pgmq.q_contended SET vt = clock_timestamp()")
            other.execute("SELECT * FROM pgmq.read('contended', 60, 1)")
        taken.set()

    send(conn, "contended", {})
    with captured() as logs:
        worker = make_worker(target, reg, burst=False)

        async def go() -> None:
            task = asyncio.create_task(worker.run())
            while not taken.is_set():
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            worker.stop()
            await asyncio.wait_for(task, 10)

        asyncio.run(go())
    [row] = rows(conn, "contended")
    assert row["read_ct"] == 2  # the other delivery is intact
    assert not row["visible"]
    assert "lease.lost" in [e["event"] for e in logs]
    assert "job.succeeded" not in [e["event"] for e in logs]


def test_on_stop_in_flight_handlers_finish_within_the_grace(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A warm stop lets running handlers finish and acks them."""
    started = threading.Event()
    finished: list[int] = []

    @handler("slowish", registry=reg)
    async def slowish(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(0.8)
        finished.append(ctx.msg_id)

    ids = send(conn, "slowish", {}, {})
    worker = make_worker(target, reg, burst=False, shutdown_grace=timedelta(seconds=5))

    stop_once_started(worker, started)
    assert sorted(finished) == ids
    assert rows(conn, "slowish") == []


def test_past_the_grace_held_messages_are_released_at_once(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Handlers still running when the grace ends are cancelled and their messages visible now."""
    started = threading.Event()

    @handler("stuck", registry=reg, visibility_timeout=300)
    async def stuck(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    send(conn, "stuck", {"a": 1})
    worker = make_worker(target, reg, burst=False, shutdown_grace=timedelta(milliseconds=300))

    t0 = time.monotonic()
    with captured() as logs:
        stop_once_started(worker, started)
    assert time.monotonic() - t0 < 5
    [row] = rows(conn, "stuck")
    assert row["visible"]  # not after its 300 s visibility timeout
    assert row["read_ct"] == 1
    assert "job.released" in [e["event"] for e in logs]


def test_a_cold_stop_cancels_at_once_and_still_releases(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """A second stop request does not wait for the grace."""
    started = threading.Event()

    @handler("stuck", registry=reg, visibility_timeout=300)
    async def stuck(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    send(conn, "stuck", {})
    worker = make_worker(target, reg, burst=False, shutdown_grace=timedelta(seconds=60))

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while not started.is_set():
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.sleep(0.2)
        worker.stop(cold=True)
        await asyncio.wait_for(task, 10)

    t0 = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - t0 < 5
    [row] = rows(conn, "stuck")
    assert row["visible"]


def test_concurrency_bounds_handlers_running_at_once(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """With --concurrency 2, never more than two handlers run together, and all finish."""
    peak = Peak()
    done: list[int] = []

    @handler("bounded", registry=reg)
    async def bounded(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("bounded")
        await asyncio.sleep(0.1)
        peak.leave("bounded")
        done.append(payload["i"])

    send(conn, "bounded", *({"i": i} for i in range(8)))
    burst_worker(reg, concurrency=2)
    assert peak.peak["bounded"] == 2
    assert sorted(done) == list(range(8))


def test_a_read_asks_for_half_the_slots_and_all_of_them_still_run(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """With every slot free, a read takes half of them (the next read overlaps the handlers the
    last one started), and the other half is read at once: concurrency 4 still runs 4 together."""
    peak = Peak()

    @handler("halves", registry=reg)
    async def halves(payload: dict[str, Any], ctx: Context) -> None:
        peak.enter("halves")
        await asyncio.sleep(0.2)
        peak.leave("halves")

    send(conn, "halves", *({"i": i} for i in range(12)))
    burst_worker(reg, concurrency=4)
    assert peak.peak["halves"] == 4
    # Each read's now() is the attempt's start of every delivery it returned.
    reads = conn.execute(
        "SELECT attempt_started_at, count(*) FROM pgmq_worker.jobs WHERE queue = 'halves'"
        " AND status = 'succeeded' GROUP BY 1"
    ).fetchall()
    assert sum(n for _, n in reads) == 12
    assert max(n for _, n in reads) == 2


def test_every_named_queue_is_served(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A worker for several queues drains all of them, and only those named."""
    got: list[str] = []

    @handler("first", registry=reg)
    async def first(payload: dict[str, Any], ctx: Context) -> None:
        got.append("first")

    @handler("second", registry=reg)
    def second(payload: dict[str, Any], ctx: Context) -> None:
        got.append("second")

    @handler("ignored", registry=reg)
    async def ignored(payload: dict[str, Any], ctx: Context) -> None:
        got.append("ignored")

    send(conn, "first", *({} for _ in range(5)))
    send(conn, "second", *({} for _ in range(5)))
    send(conn, "ignored", {})
    burst_worker(reg, queues=("first", "second"), concurrency=3)
    assert sorted(got) == ["first"] * 5 + ["second"] * 5
    assert len(rows(conn, "ignored")) == 1


def test_archive_option_keeps_the_message_in_pgmqs_archive(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """With archive=True a finished message moves to pgmq.a_<queue> instead of being deleted."""

    @handler("kept", registry=reg, archive=True)
    async def kept(payload: dict[str, Any], ctx: Context) -> None:
        return None

    [msg_id] = send(conn, "kept", {"k": 1})
    burst_worker(reg)
    assert rows(conn, "kept") == []
    archived = conn.execute("SELECT msg_id, message FROM pgmq.a_kept").fetchall()
    assert archived == [(msg_id, {"k": 1})]


def test_the_worker_creates_missing_queues_and_their_dead_letter_queues(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Starting a worker creates each queue and `<queue>_dlq` as real pgmq queues."""

    @handler("fresh", registry=reg)
    async def fresh(payload: dict[str, Any], ctx: Context) -> None:
        return None

    burst_worker(reg)
    assert {"fresh", dlq_name("fresh")} <= set(pgmq.list_queues(conn))


def test_a_notification_wakes_an_idle_worker_before_the_poll(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """An idle worker polling every 5 s picks a new message up at once: inserts notify it.

    This holds on every pgmq version, Supabase's 1.5.1 (no insert notifications of its own)
    included: the worker installs its own statement-level trigger.
    """
    picked: list[float] = []

    @handler("wake", registry=reg)
    async def wake(payload: dict[str, Any], ctx: Context) -> None:
        picked.append(time.monotonic())

    pgmq.ensure_queue(conn, "wake")
    poll = 5.0
    worker = make_worker(target, reg, burst=False, poll_interval=timedelta(seconds=poll))
    sent_at: list[float] = []

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.0)  # idle: listener up, first polls done
        for i in range(3):
            sent_at.append(time.monotonic())
            await asyncio.to_thread(pgmq.send, conn, "wake", {"i": i})
            deadline = time.monotonic() + poll + 2
            while len(picked) <= i and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 10)

    with captured() as logs:
        asyncio.run(go())
    started = next(e for e in logs if e["event"] == "worker.started")
    assert started["wakeup"] == "listen+poll"
    assert len(picked) == 3
    latencies = [p - s for p, s in zip(picked, sent_at, strict=True)]
    assert max(latencies) < 1.0, latencies


def test_an_open_enqueue_transaction_does_not_block_other_senders(
    target: Target, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The insert trigger takes no shared lock: a sender inside an open transaction blocks no one."""

    @handler("busy", registry=reg)
    async def busy(payload: dict[str, Any], ctx: Context) -> None:
        return None

    burst_worker(reg)  # installs the queue and its insert trigger
    with psycopg.connect(target.url) as holder, psycopg.connect(target.url, autocommit=True) as other:
        pgmq.send(holder, "busy", {"held": True})  # not committed yet
        other.execute("SET lock_timeout = '500ms'")
        pgmq.send(other, "busy", {"held": False})  # would raise LockNotAvailable if blocked
        holder.rollback()
    assert [r["message"] for r in rows(conn, "busy")] == [{"held": False}]


def test_without_owning_the_queue_table_the_worker_polls(
    server_url: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A role that may use a queue but not add triggers to it gets polling, and still works."""
    role = f"pgmqw_user_{time.monotonic_ns() % 10**9}"
    pgmq.ensure_queue(conn, "shared")
    pgmq.send(conn, "shared", {"n": 1})
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(role)))
    try:
        for statement in (
            "GRANT USAGE ON SCHEMA pgmq, pgmq_worker TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgmq TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA pgmq TO {}",
            "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA pgmq_worker TO {}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(role)))
        reg = Registry()
        got: list[int] = []

        @handler("shared", registry=reg)
        async def shared(payload: dict[str, Any], ctx: Context) -> None:
            got.append(payload["n"])

        as_user = Target(with_user(db_url, role), transaction_pooler=False)
        with captured() as logs:
            run_burst(as_user, reg)
        assert got == [1]
        started = next(e for e in logs if e["event"] == "worker.started")
        assert started["wakeup"] == "poll"
        assert "worker.notify_unavailable" in [e["event"] for e in logs]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def with_user(url: str, user: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    params["user"] = user
    params.pop("password", None)
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


def test_a_transaction_pooler_target_polls_instead_of_listening(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Through a transaction pooler there is no LISTEN: the worker says so and still processes."""
    got: list[int] = []

    @handler("pooled", registry=reg)
    async def pooled(payload: dict[str, Any], ctx: Context) -> None:
        got.append(payload["i"])

    send(conn, "pooled", {"i": 1})
    pooled_target = Target(target.url, transaction_pooler=True)
    with captured() as logs:
        run_burst(pooled_target, reg)
    assert got == [1]
    started = next(e for e in logs if e["event"] == "worker.started")
    assert started["wakeup"] == "poll"


def test_the_worker_survives_its_connections_being_terminated(
    target: Target, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Backends killed mid-run (a database restart, a failover) are reconnected; nothing is lost."""
    done: set[int] = set()

    @handler("sturdy", registry=reg)
    async def sturdy(payload: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(0.01)
        done.add(payload["i"])

    pgmq.ensure_queue(conn, "sturdy")
    worker = make_worker(target, reg, burst=False)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        for i in range(60):
            await asyncio.to_thread(pgmq.send, conn, "sturdy", {"i": i})
            if i % 15 == 7:
                await asyncio.to_thread(
                    conn.execute,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 30
        while len(done) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not task.done(), "the worker exited on connection loss"
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    assert done == set(range(60))
    assert rows(conn, "sturdy") == []


def test_only_prepared_statement_errors_count_as_a_pooler_collision(
    conn: psycopg.Connection[Any],
) -> None:
    """At run time the pooler is diagnosed only from what a pooler causes: a prepared statement
    missing or already there. A data error is its message's problem, even one raised binding a
    parameter (issue 18 §3: a NUL in one result stopped the worker with the pooler message); an
    undeclared pooler is found at start instead (test_db: transaction_pooler_evidence)."""
    from worker.trouble import pooler_misconfigured as _pooler_misconfigured  # noqa: PLC0415

    def error(query: str, params: list[Any] | None = None) -> psycopg.Error:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(query, params)
        return caught.value

    assert _pooler_misconfigured(error("EXECUTE pgmqw_no_such_statement"))
    conn.execute("PREPARE pgmqw_twice AS SELECT 1")
    assert _pooler_misconfigured(error("PREPARE pgmqw_twice AS SELECT 1"))
    # Before issue 18 these two bind-time conversions counted as collisions; now they do not.
    assert not _pooler_misconfigured(error("SELECT %s::jsonb", ["acc_jobs"]))
    assert not _pooler_misconfigured(error("SELECT %s::bigint[]", ["not an array"]))
    assert not _pooler_misconfigured(error("SELECT %s::jsonb", ['"a\\u0000b"']))  # a NUL in a result
    assert not _pooler_misconfigured(error("SELECT 1 / 0"))
    assert not _pooler_misconfigured(error("SELECT 'x'::int"))
    assert not _pooler_misconfigured(error("SELECT * FROM no_such_table"))


def test_a_burst_worker_exits_soon_after_a_message_held_elsewhere_is_gone(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Burst: a message another consumer holds keeps the worker waiting (it may come back), and once
    that consumer deletes it the worker exits within a fraction of a second: deletes notify no one,
    so it must not back off towards its (here 30 s) poll interval meanwhile."""

    @handler("held", registry=reg)
    async def held(payload: dict[str, Any], ctx: Context) -> None:
        raise AssertionError("the held message must not be delivered to this worker")

    [msg_id] = send(conn, "held", {"n": 1})
    assert _take(conn, "held") == [msg_id]
    deleted_at: list[float] = []

    def release_later() -> None:
        time.sleep(3.0)  # long enough for a backed-off poll wait to reach seconds
        conn.execute("SELECT pgmq.delete(%s, %s::bigint)", ("held", msg_id))
        deleted_at.append(time.monotonic())

    releaser = threading.Thread(target=release_later)
    releaser.start()
    try:
        burst_worker(reg, timeout=20, poll_interval=timedelta(seconds=30))
    finally:
        releaser.join()
    exited_after = time.monotonic() - deleted_at[0]
    assert exited_after < 1.5, f"the burst worker exited {exited_after:.2f} s after the last message went"


def _take(conn: psycopg.Connection[Any], queue: str) -> list[int]:
    """Read (lease) messages as another consumer would: plain pgmq.read, 60 s visibility."""
    return [int(r[0]) for r in conn.execute("SELECT msg_id FROM pgmq.read(%s, 60, 1)", (queue,)).fetchall()]
