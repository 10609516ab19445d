"""The web process's coalesced enqueues (web/coalesce.py): many requests to a statement, each its own job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.connect import Target, async_pool
from queues import UnknownQueue, pgmq
from queues.enqueue import Enqueued, Outgoing
from web.coalesce import Coalescer

QUEUE = "coalesced"
# A payload the database itself refuses (a trigger the test installs), after every Python check
# passed: the only way one request of a statement can fail on its own.
REFUSE = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message ? 'poison' THEN RAISE EXCEPTION 'poisoned payload'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON pgmq.q_coalesced FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


@pytest.fixture
def queue(conn: psycopg.Connection[Any]) -> str:
    pgmq.ensure_queue(conn, QUEUE)
    return QUEUE


def _send(
    body: dict[str, Any], *, delay: float = 0, owner: uuid.UUID | None = None, queue: str = QUEUE
) -> Outgoing:
    return Outgoing.of(queue, body, delay, owner, key=None, hook=None, catalog=None)


async def _all(target: Target, sends: Sequence[Outgoing], **kwargs: int) -> tuple[list[Any], Coalescer]:
    """Enqueue every send at once through one coalescer; each one's Enqueued or exception."""
    pool = async_pool(target, min_size=1, max_size=4)
    async with pool:
        coalescer = Coalescer(pool, **kwargs)
        answers = await asyncio.gather(*(coalescer.enqueue(s) for s in sends), return_exceptions=True)
    return answers, coalescer


def _rows(conn: psycopg.Connection[Any]) -> dict[int, dict[str, Any]]:
    """Each message of the queue with its job row, by msg_id."""
    found = conn.execute(
        "SELECT m.msg_id, m.message, m.vt - m.enqueued_at AS delay, j.id, j.owner, j.status"
        " FROM pgmq.q_coalesced AS m JOIN pgmq_worker.jobs AS j ON j.queue = %s AND j.msg_id = m.msg_id",
        (QUEUE,),
    ).fetchall()
    return {r[0]: {"message": r[1], "delay": r[2], "id": r[3], "owner": r[4], "status": r[5]} for r in found}


def test_concurrent_requests_share_statements_and_each_gets_its_own_job(
    target: Target, conn: psycopg.Connection[Any], queue: str
) -> None:
    """50 requests at once: fewer statements than requests, and every job is the one its request sent."""
    owners = [uuid.uuid4() if i % 3 else None for i in range(50)]
    sends = [_send({"i": i}, delay=(i % 4) * 10, owner=owners[i]) for i in range(50)]
    answers, coalescer = asyncio.run(_all(target, sends))
    assert all(isinstance(a, Enqueued) for a in answers), answers
    assert coalescer.sent_requests == 50
    assert coalescer.sent_statements < 50  # two statements in flight; the rest waited together
    stored = _rows(conn)
    assert len(stored) == 50
    for i, sent in enumerate(answers):
        row = stored[sent.msg_id]
        assert row["message"] == {"i": i}
        assert row["id"] == sent.job_id
        assert row["owner"] == owners[i]
        assert row["status"] == "queued"
        assert timedelta(seconds=(i % 4) * 10) <= row["delay"] < timedelta(seconds=(i % 4) * 10 + 5)


def test_a_lone_request_is_one_statement(target: Target, conn: psycopg.Connection[Any], queue: str) -> None:
    """Nothing in flight: the request goes at once, alone, as it did before coalescing."""
    [sent], coalescer = asyncio.run(_all(target, [_send({"alone": True})]))
    assert (coalescer.sent_statements, coalescer.sent_requests) == (1, 1)
    assert _rows(conn)[sent.msg_id]["message"] == {"alone": True}


def test_one_refused_request_fails_alone(target: Target, conn: psycopg.Connection[Any], queue: str) -> None:
    """The database refuses one payload of a statement: that request fails, every other one is sent."""
    conn.execute(REFUSE)
    sends = [_send({"poison": 1} if i == 7 else {"i": i}) for i in range(30)]
    answers, coalescer = asyncio.run(_all(target, sends, statements=1))
    assert isinstance(answers[7], psycopg.errors.RaiseException)
    assert "poisoned payload" in str(answers[7])
    sent = [a for i, a in enumerate(answers) if i != 7]
    assert all(isinstance(a, Enqueued) for a in sent), answers
    stored = _rows(conn)
    assert sorted(r["message"]["i"] for r in stored.values()) == [i for i in range(30) if i != 7]
    assert coalescer.sent_statements > 2  # the failed statement was tried again request by request


def test_an_unknown_queue_fails_every_request_of_it(
    target: Target, conn: psycopg.Connection[Any], queue: str
) -> None:
    """A queue that does not exist: each of its requests hears UnknownQueue; another queue's go on."""
    sends = [_send({"i": i}, queue="nowhere" if i % 2 else QUEUE) for i in range(20)]
    answers, _ = asyncio.run(_all(target, sends, statements=1))
    for i, a in enumerate(answers):
        assert isinstance(a, UnknownQueue if i % 2 else Enqueued), (i, a)
    assert len(_rows(conn)) == 10


def test_a_database_that_cannot_be_reached_fails_each_request() -> None:
    """No server: every waiting request gets the pool's error (the web answers 503), none hangs."""
    target = Target("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", transaction_pooler=False)

    async def go() -> list[Any]:
        pool = async_pool(target, min_size=0, max_size=2, timeout=1)
        await pool.open()
        try:
            coalescer = Coalescer(pool)
            return await asyncio.gather(
                *(coalescer.enqueue(_send({"i": i})) for i in range(5)), return_exceptions=True
            )
        finally:
            await pool.close()

    answers = asyncio.run(asyncio.wait_for(go(), 30))
    assert len(answers) == 5
    assert {type(a).__name__ for a in answers} <= {"PoolTimeout", "OperationalError"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 3), st.booleans()),  # poisoned, delay, owned
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 3),
)
def test_any_mix_of_requests_each_gets_its_own_answer(
    target: Target,
    conn: psycopg.Connection[Any],
    queue: str,
    mix: list[tuple[bool, int, bool]],
    statements: int,
) -> None:
    """Whatever the mix of good and refused payloads: each good one is stored exactly once as sent,
    each refused one fails, nothing else is stored."""
    conn.execute(
        "DROP TRIGGER IF EXISTS refuse_poison ON pgmq.q_coalesced; DROP FUNCTION IF EXISTS refuse_poison()"
    )
    conn.execute(REFUSE)
    conn.execute("DELETE FROM pgmq.q_coalesced")
    conn.execute("DELETE FROM pgmq_worker.jobs")
    owners = [uuid.uuid4() if owned else None for _, _, owned in mix]
    sends = [
        _send({"poison": i} if bad else {"i": i}, delay=delay, owner=owners[i])
        for i, (bad, delay, _) in enumerate(mix)
    ]
    answers, _ = asyncio.run(_all(target, sends, statements=statements))
    stored = _rows(conn)
    assert len(stored) == sum(not bad for bad, _, _ in mix)
    for i, ((bad, delay, _), a) in enumerate(zip(mix, answers, strict=True)):
        if bad:
            assert isinstance(a, psycopg.errors.RaiseException)
            continue
        assert isinstance(a, Enqueued)
        row = stored[a.msg_id]
        assert (row["message"], row["id"], row["owner"]) == ({"i": i}, a.job_id, owners[i])
        assert timedelta(seconds=delay) <= row["delay"] < timedelta(seconds=delay + 5)


def test_large_bodies_split_statements(target: Target, conn: psycopg.Connection[Any], queue: str) -> None:
    """Bodies over the statement's character budget go in more statements, never a giant one."""
    sends = [_send({"i": i, "pad": "x" * 300}) for i in range(30)]
    answers, coalescer = asyncio.run(_all(target, sends, statements=1, batch_chars=1000))
    assert all(isinstance(a, Enqueued) for a in answers)
    assert coalescer.sent_statements >= 10  # at most three ~320-character bodies a statement
    assert sorted(r["message"]["i"] for r in _rows(conn).values()) == list(range(30))
    [alone], lone = asyncio.run(_all(target, [_send({"big": "y" * 5000})], batch_chars=1000))
    assert isinstance(alone, Enqueued) and lone.sent_statements == 1  # over the budget alone: still sent


def test_bad_settings_are_refused() -> None:
    """A coalescer with no statement or an empty batch could never send anything."""
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(None, statements=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(None, batch=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(None, batch_chars=0)  # type: ignore[arg-type]
