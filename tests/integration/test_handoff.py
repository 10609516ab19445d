"""ctx.enqueue: a handler hands work to the next queue in the transaction that acks its own message."""

from __future__ import annotations

from typing import Any

import psycopg

from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, job, rows
from worker import Backoff, Context, Registry, handler

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


def queues(conn: psycopg.Connection[Any], *names: str) -> None:
    for name in names:
        pgmq.ensure_queue(conn, name)


def test_a_handoff_is_sent_with_the_ack(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """On success the next queue has the message and a queued job row; the first message is gone."""

    @handler("ocr", registry=reg)
    async def ocr(payload: dict[str, Any], ctx: Context) -> str:
        ctx.enqueue(
            "translate", {"text": payload["page"].upper()}, owner="00000000-0000-0000-0000-000000000007"
        )
        return "handed off"

    queues(conn, "ocr", "translate")
    pgmq.send(conn, "ocr", {"page": "bonjour"})
    burst_worker(reg)
    assert rows(conn, "ocr") == []
    [sent] = rows(conn, "translate")
    assert sent["message"] == {"text": "BONJOUR"}
    row = job(conn, "translate", sent["msg_id"])
    assert (row["status"], str(row["owner"])) == ("queued", "00000000-0000-0000-0000-000000000007")


def test_a_failed_attempt_sends_nothing(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A handler that enqueues, then raises, hands nothing off (the retry enqueues again, once)."""
    runs: list[int] = []

    @handler("flaky", registry=reg, backoff=FAST, max_attempts=3)
    async def flaky(payload: dict[str, Any], ctx: Context) -> None:
        ctx.enqueue("next", {"attempt": ctx.attempt})
        runs.append(ctx.attempt)
        if ctx.attempt < 2:
            raise RuntimeError("not yet")

    queues(conn, "flaky", "next")
    pgmq.send(conn, "flaky", {})
    burst_worker(reg)
    assert runs == [1, 2]
    assert [r["message"] for r in rows(conn, "next")] == [{"attempt": 2}]


def test_a_handoff_to_a_missing_queue_fails_the_attempt(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Handing off to a queue that does not exist is a failed attempt: retried, then dead-lettered."""

    @handler("lost", registry=reg, backoff=FAST, max_attempts=2)
    async def lost(payload: dict[str, Any], ctx: Context) -> None:
        ctx.enqueue("nowhere", {})

    queues(conn, "lost")
    msg_id = pgmq.send(conn, "lost", {})
    burst_worker(reg)
    [record] = dead(conn, "lost")
    assert (record["reason"], record["error"]["type"]) == ("max_attempts", "UnknownQueue")
    assert "nowhere" in record["error"]["message"]
    assert job(conn, "lost", msg_id)["status"] == "dead"


def test_no_handoff_when_the_delivery_is_no_longer_ours(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """If the lease passed to another reader before the ack, neither the ack nor the handoff happens."""
    runs: list[int] = []

    @handler("stale", registry=reg, visibility_timeout=2, max_attempts=5)
    async def stale(payload: dict[str, Any], ctx: Context) -> None:
        ctx.enqueue("after", {"attempt": ctx.attempt})
        runs.append(ctx.attempt)
        if ctx.attempt == 1:  # someone else reads the message meanwhile (read_ct moves on)
            bump = "UPDATE pgmq.q_stale SET read_ct = read_ct + 1, vt = now() WHERE msg_id = %s"
            conn.execute(bump, (ctx.msg_id,))

    queues(conn, "stale", "after")
    pgmq.send(conn, "stale", {})
    burst_worker(reg)
    assert rows(conn, "stale") == []
    assert runs == [1, 3]  # the stale delivery's ack failed, so the message ran again
    assert [r["message"] for r in rows(conn, "after")] == [{"attempt": 3}]  # only the held one
