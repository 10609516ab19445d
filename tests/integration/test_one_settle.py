"""Every delivery ends in exactly one settle, whatever raises inside it (issue 18 §2 and §3).

A value the result check missed, our own code raising while the delivery runs, a handler that
calls sys.exit(): each delivery is retried with its error or dead-lettered, its batch-mates land,
and the worker runs on (no PoolerMisconfigured for a data error on a direct connection).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from db import storable
from db.connect import Target, async_pool
from queues import enqueue, pgmq
from tests.support.helpers import ack_later, captured, dead, job, make_worker, rows, send
from worker import Backoff, Context, Registry, handler
from worker import attempt as attempt_module
from worker.errors import PoolerMisconfigured
from worker.outcome import Outcome, Succeeded
from worker.progress import ProgressReporter, Report
from worker.registry import HandlerSpec
from worker.runner import Worker
from worker.running_marks import RunningMarks
from worker.settle import Acks
from worker.store import deliveries
from worker.store.deliveries import Message

FAST = Backoff(base=0.05, cap=0.1, jitter=0)


def run_watching(worker: Worker, timeout: float = 30) -> list[dict[str, Any]]:
    """Run a burst worker to completion; what the event loop reported (a task's lost exception)."""
    reported: list[dict[str, Any]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        await asyncio.wait_for(worker.run(), timeout)
        gc.collect()  # a task whose exception nobody retrieved says so when it is collected

    asyncio.run(go())
    return reported


class Circular(dict[str, Any]):
    """A result that refers to itself: encoding it raises (ValueError) in Python, not in Postgres."""


def refused_value(kind: str) -> Any:
    """A result the settle cannot store: a NUL Postgres refuses, or a value the encoder refuses."""
    if kind == "nul":
        return {"text": "scanned\x00page"}
    loop = Circular(n=3)
    loop["self"] = loop
    return loop


def unchecked(monkeypatch: pytest.MonkeyPatch, bad: Callable[[dict[str, Any]], Any | None]) -> None:
    """Let chosen results past the result check (worker.execute), as a value that slips through would."""
    real = attempt_module.execute

    async def execute(task: HandlerSpec, message: Message, ctx: Context, executor: Any) -> Outcome:
        outcome = await real(task, message, ctx, executor)
        value = bad(message.body)
        return Succeeded(value) if value is not None else outcome

    monkeypatch.setattr(attempt_module, "execute", execute)


@pytest.mark.parametrize("kind", ["nul", "circular"])
@pytest.mark.parametrize("archive", [False, True], ids=["batched", "archived"])
def test_a_result_the_settle_cannot_store_dead_letters_that_delivery_alone(
    target: Target,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    archive: bool,
    reg: Registry,
) -> None:
    """A result Postgres (or the encoder) refuses at the ack, past the result check: that delivery
    is dead-lettered `invalid_result` with the error, once; its batch-mates are acked; the worker
    does not stop, and on a direct connection nothing says "transaction pooler"."""
    calls: list[int] = []

    @handler("ocr_pages", registry=reg, max_attempts=5, archive=archive)
    async def ocr(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        calls.append(payload["n"])
        return {"n": payload["n"]}

    unchecked(monkeypatch, lambda body: refused_value(kind) if body["n"] == 3 else None)
    ids = send(conn, "ocr_pages", *({"n": n} for n in range(8)))
    worker = make_worker(target, reg, concurrency=8)
    with captured() as logs:
        reported = run_watching(worker)
    assert reported == []
    assert sorted(calls) == list(range(8))  # each ran once: nothing was retried
    assert rows(conn, "ocr_pages") == []
    [record] = dead(conn, "ocr_pages")
    assert (record["reason"], record["payload"]) == ("invalid_result", {"n": 3})
    assert record["error"]["type"] == "InvalidResult"
    assert "cannot be stored" in record["error"]["message"]
    assert job(conn, "ocr_pages", ids[3])["status"] == "dead"
    statuses = {msg_id: job(conn, "ocr_pages", msg_id)["status"] for msg_id in ids}
    assert statuses == {msg_id: "dead" if i == 3 else "succeeded" for i, msg_id in enumerate(ids)}
    assert job(conn, "ocr_pages", ids[0])["result"] == {"n": 0}
    events = [e["event"] for e in logs]
    assert "worker.pooler_misconfigured" not in events
    assert "lease.lost" not in events  # an archiving ack once archived a delivery and called it lost
    assert events.count("job.dead_lettered") == 1


def test_acks_isolate_the_member_a_batch_fails_on(target: Target, conn: psycopg.Connection[Any]) -> None:
    """A batch whose statement fails on one member's result: the others are acked, the bad one
    alone gets the error (so its settle can dead-letter it)."""
    pgmq.ensure_queue(conn, "mixed")
    pgmq.send_batch(conn, "mixed", [{"i": i} for i in range(7)])

    async def go() -> list[BaseException | bool]:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        acks = Acks(pool)
        acks.start()
        try:
            async with pool.connection() as aconn:
                messages = await deliveries.read(aconn, "mixed", 30, 7)
            results = [{"text": "a\x00b"} if m.body["i"] == 4 else {"i": m.body["i"]} for m in messages]
            return list(
                await asyncio.gather(
                    *(ack_later(acks, m, r) for m, r in zip(messages, results, strict=True)),
                    return_exceptions=True,
                )
            )
        finally:
            await acks.close()
            await pool.close()

    landed = asyncio.run(go())
    assert landed[:4] == [True] * 4 and landed[5:] == [True] * 2
    # The storage rule refuses the NUL while the batch's parameters are built (Postgres would at
    # the statement): either way one member's data, isolated from its batch-mates.
    assert isinstance(landed[4], psycopg.errors.UntranslatableCharacter | storable.Unstorable)
    [left] = rows(conn, "mixed")
    assert left["message"] == {"i": 4}


@pytest.mark.parametrize("part", ["Context", "ProgressReporter", "Steps"])
def test_our_own_code_raising_inside_a_delivery_still_settles_it(
    target: Target, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, part: str, reg: Registry
) -> None:
    """Building the delivery's Context (or its reporter, its steps) raises: the attempt fails with
    that error recorded and is retried, then dead-lettered; the job never stays `running`, no task
    loses its exception, and the other deliveries succeed."""

    @handler("fragile", registry=reg, max_attempts=2, backoff=FAST)
    async def fragile(payload: dict[str, Any], ctx: Context) -> None:
        return None

    pgmq.ensure_queue(conn, "fragile")
    good, bad = (enqueue(conn, "fragile", {"n": n}) for n in (1, 2))
    real = getattr(attempt_module, part)

    def broken_for_bad(*args: Any, **kwargs: Any) -> Any:
        if bad.msg_id == kwargs.get("msg_id") or bad.job_id in args:  # Context by msg_id, others by job
            raise RuntimeError(f"{part} could not be built")
        return real(*args, **kwargs)

    monkeypatch.setattr(attempt_module, part, broken_for_bad)
    reported = run_watching(make_worker(target, reg))
    assert reported == []
    assert rows(conn, "fragile") == []
    assert job(conn, "fragile", good.msg_id)["status"] == "succeeded"
    [record] = dead(conn, "fragile")
    assert (record["reason"], record["payload"], record["attempts"]) == ("max_attempts", {"n": 2}, 2)
    assert record["error"] == {
        **record["error"],
        "type": "RuntimeError",
        "message": f"{part} could not be built",
    }
    assert job(conn, "fragile", bad.msg_id)["status"] == "dead"


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "def"])
@pytest.mark.parametrize("exit_with", [SystemExit, KeyboardInterrupt])
def test_a_handler_that_exits_fails_its_attempt_and_the_worker_runs_on(
    target: Target,
    conn: psycopg.Connection[Any],
    is_async: bool,
    exit_with: type[BaseException],
    reg: Registry,
) -> None:
    """sys.exit() (or a KeyboardInterrupt raised) in handler code is a failed attempt like any
    exception: recorded, retried, dead-lettered once attempts are spent. It stops nothing; a
    worker is stopped with a signal."""

    def work(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["n"] == 1:
            raise exit_with(3)
        return payload

    if is_async:

        @handler("quitter", registry=reg, max_attempts=2, backoff=FAST)
        async def quitter_async(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return work(payload)
    else:

        @handler("quitter", registry=reg, max_attempts=2, backoff=FAST)
        def quitter_sync(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return work(payload)

    [good, bad, later] = send(conn, "quitter", {"n": 0}, {"n": 1}, {"n": 2})
    reported = run_watching(make_worker(target, reg))
    assert reported == []
    assert [job(conn, "quitter", m)["status"] for m in (good, bad, later)] == [
        "succeeded",
        "dead",
        "succeeded",
    ]
    [record] = dead(conn, "quitter")
    assert (record["reason"], record["attempts"]) == ("max_attempts", 2)
    assert record["error"]["type"] == exit_with.__name__
    assert job(conn, "quitter", bad)["error"]["type"] == exit_with.__name__


def test_a_progress_write_refused_on_its_timer_fails_the_attempt_at_close(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """A coalesced progress report written later by its timer, refused by Postgres: the timer does
    not die unseen; the reporter's close (before the settle) raises the error, so the attempt fails
    with it."""
    [msg_id] = send(conn, "reporting", {"n": 1})

    async def go() -> BaseException | None:
        pool = async_pool(target, min_size=1, max_size=2)
        await pool.open()
        try:
            async with pool.connection() as aconn:
                [message] = await deliveries.read(aconn, "reporting", 30, 1)
            assert message.job_id is not None
            with RunningMarks(pool, after_s=60).held(message) as mark:  # the first write marks it
                reporter = ProgressReporter(pool, message.job_id, message.read_ct, 0.05, mark)
                await reporter.report(Report(10, "ocr", None))  # written now
                await reporter.report(Report(20, "ocr\x00", None))  # bypasses check_report: written later
                await asyncio.sleep(0.3)
                try:
                    await reporter.close()
                except psycopg.Error as exc:
                    return exc
                return None
        finally:
            await pool.close()

    error = asyncio.run(go())
    assert isinstance(error, psycopg.DataError)
    assert job(conn, "reporting", msg_id)["progress"] == 10


def test_a_nul_result_on_a_direct_connection_does_not_stop_the_worker(
    target: Target, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, reg: Registry
) -> None:
    """Issue 18: a NUL in one result stopped the worker with "goes through a transaction pooler".
    On a direct connection the worker runs on and says nothing about a pooler."""

    @handler("scans", registry=reg)
    async def scan(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"text": "scanned page"}

    unchecked(monkeypatch, lambda body: {"text": "scanned\x00page"} if body["n"] == 0 else None)
    send(conn, "scans", *({"n": n} for n in range(3)))
    with captured() as logs:
        asyncio.run(asyncio.wait_for(make_worker(target, reg).run(), 30))  # raises if it stopped itself
    assert "worker.pooler_misconfigured" not in [e["event"] for e in logs]
    assert [r["reason"] for r in dead(conn, "scans")] == ["invalid_result"]
    assert rows(conn, "scans") == []


def test_an_undeclared_transaction_pooler_stops_the_worker_before_it_reads(
    pgbouncer_url: str, conn: psycopg.Connection[Any], reg: Registry
) -> None:
    """Through a real PgBouncer in transaction mode, told nothing (a direct Target): the start-up
    probe sees it and run() raises PoolerMisconfigured naming the setting, before any message is
    read; the same PgBouncer, declared, serves the queue."""

    @handler("via_bouncer", registry=reg)
    async def noop(payload: dict[str, Any], ctx: Context) -> None:
        return None

    send(conn, "via_bouncer", {"n": 1})
    undeclared = make_worker(Target(pgbouncer_url, transaction_pooler=False), reg)
    with captured() as logs, pytest.raises(PoolerMisconfigured, match="PGMQ_WORKER_POOLER=transaction"):
        asyncio.run(asyncio.wait_for(undeclared.run(), 30))
    [failure] = [e for e in logs if e["event"] == "worker.pooler_misconfigured"]
    assert "server session" in failure["evidence"]
    [untouched] = rows(conn, "via_bouncer")
    assert untouched["read_ct"] == 0
    asyncio.run(asyncio.wait_for(make_worker(Target(pgbouncer_url, transaction_pooler=True), reg).run(), 30))
    assert rows(conn, "via_bouncer") == []
