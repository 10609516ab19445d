"""The enqueue API: validated payloads, transactional with the caller's writes, batches."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from queues import Contract, InvalidPayload, UnknownQueue, aenqueue, enqueue, enqueue_batch, pgmq
from queues.enqueue import MAX_PAYLOAD_BYTES
from tests.support.helpers import job, rows


class Resize(BaseModel):
    image_id: int
    width: int


RESIZE = Contract("resize", Resize)


@pytest.fixture
def queue(conn: psycopg.Connection[Any]) -> str:
    pgmq.ensure_queue(conn, "resize")
    return "resize"


def test_enqueue_validates_against_the_contract_and_sends(conn: psycopg.Connection[Any], queue: str) -> None:
    """A valid payload is sent as JSON; the returned id is the pgmq message id."""
    sent = enqueue(conn, RESIZE, {"image_id": 3, "width": 640})
    [row] = rows(conn, queue)
    assert row["msg_id"] == sent.msg_id
    assert row["message"] == {"image_id": 3, "width": 640}


def test_a_model_instance_can_be_enqueued(conn: psycopg.Connection[Any], queue: str) -> None:
    """Passing the model itself works too."""
    enqueue(conn, RESIZE, Resize(image_id=1, width=2))
    assert rows(conn, queue)[0]["message"] == {"image_id": 1, "width": 2}


def test_an_enqueue_rolls_back_with_the_callers_transaction(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """Inside the caller's transaction, a rollback removes the message with the caller's writes."""
    conn.execute("CREATE TABLE uploads (id int)")

    def request_that_fails() -> None:
        with conn.transaction():
            conn.execute("INSERT INTO uploads VALUES (1)")
            enqueue(conn, RESIZE, {"image_id": 1, "width": 10})
            raise RuntimeError("request failed after enqueue")

    with pytest.raises(RuntimeError):
        request_that_fails()
    assert rows(conn, queue) == []
    assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (0,)
    with conn.transaction():
        conn.execute("INSERT INTO uploads VALUES (2)")
        enqueue(conn, RESIZE, {"image_id": 2, "width": 10})
    assert len(rows(conn, queue)) == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"image_id": "x", "width": 1}, "invalid"),
        ({"image_id": 1}, "invalid"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_payloads_are_refused_before_anything_is_written(
    conn: psycopg.Connection[Any], queue: str, payload: Any, message: str
) -> None:
    """Validation fails with InvalidPayload and the queue stays empty."""
    with pytest.raises(InvalidPayload, match=message):
        enqueue(conn, RESIZE, payload)
    assert rows(conn, queue) == []


def test_plain_queue_names_need_a_json_object(conn: psycopg.Connection[Any], queue: str) -> None:
    """Without a contract, only JSON objects are accepted, and they must serialise."""
    with pytest.raises(InvalidPayload, match="JSON object"):
        enqueue(conn, queue, "text")
    with pytest.raises(InvalidPayload, match="cannot be stored"):
        enqueue(conn, queue, {"when": object()})
    for number in (float("nan"), float("inf")):  # Python's json writes them; jsonb refuses them
        with pytest.raises(InvalidPayload, match="cannot be stored"):
            enqueue(conn, queue, {"score": number})
    assert rows(conn, queue) == []


def test_an_oversized_payload_is_refused(conn: psycopg.Connection[Any], queue: str) -> None:
    """Payloads over the limit are refused with advice, not sent."""
    with pytest.raises(InvalidPayload, match="over the"):
        enqueue(conn, queue, {"blob": "x" * MAX_PAYLOAD_BYTES})
    assert rows(conn, queue) == []


def test_an_unknown_queue_is_refused(conn: psycopg.Connection[Any]) -> None:
    """Enqueueing to a queue that does not exist raises UnknownQueue."""
    with pytest.raises(UnknownQueue, match="nowhere"):
        enqueue(conn, "nowhere", {})


def test_an_unknown_queue_leaves_the_callers_transaction_usable(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """A queue never seen is looked up first: UnknownQueue, and the caller's writes go on."""
    conn.execute("CREATE TABLE uploads (id int)")
    with conn.transaction():
        conn.execute("INSERT INTO uploads VALUES (1)")
        for send in (
            lambda: enqueue(conn, "nowhere", {}),
            lambda: enqueue(conn, "nowhere", {}, idempotency_key="k"),
            lambda: enqueue_batch(conn, "nowhere", [{}, {}]),
        ):
            with pytest.raises(UnknownQueue, match="nowhere"):
                send()
        enqueue(conn, RESIZE, {"image_id": 1, "width": 1})
    assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (1,)
    assert len(rows(conn, queue)) == 1


def test_a_queue_dropped_after_a_send_is_unknown_then_usable_again(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """A dropped queue is unknown to the next send, in a transaction or not; made again, it works."""
    enqueue(conn, RESIZE, {"image_id": 1, "width": 1})
    enqueue_batch(conn, RESIZE, [{"image_id": 2, "width": 1}])
    conn.execute("SELECT pgmq.drop_queue('resize')")
    with pytest.raises(UnknownQueue, match="create it first"):
        enqueue(conn, RESIZE, {"image_id": 3, "width": 1})
    with pytest.raises(UnknownQueue, match="create it first"):
        enqueue_batch(conn, RESIZE, [{"image_id": 4, "width": 1}])
    with conn.transaction():  # looked up first: the transaction survives the refusal
        with pytest.raises(UnknownQueue, match="create it first"):
            enqueue(conn, RESIZE, {"image_id": 5, "width": 1})
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pgmq.ensure_queue(conn, "resize")
    with conn.transaction():
        again = enqueue(conn, RESIZE, {"image_id": 6, "width": 1})
    assert [r["message"]["image_id"] for r in rows(conn, queue)] == [6]
    assert again.msg_id > 2  # past the ids the old queue's job rows hold (test below)


@pytest.mark.parametrize("send", ["one", "keyed", "batch"])
def test_an_unknown_queue_outside_a_transaction_leaves_the_connection_usable(db_url: str, send: str) -> None:
    """Not in a transaction yet, the send is tried as is; UnknownQueue rolls back only its own
    statement, and the connection (not autocommit) takes the caller's next statements."""
    with psycopg.connect(db_url) as c:
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        key = "k" if send == "keyed" else None
        with pytest.raises(UnknownQueue, match="nowhere"):
            enqueue_batch(c, "nowhere", [{}, {}]) if send == "batch" else enqueue(
                c, "nowhere", {}, idempotency_key=key
            )
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.commit()


def test_an_unknown_queue_on_an_async_connection_leaves_it_usable(db_url: str) -> None:
    """aenqueue: the same, idle or inside the caller's transaction."""

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            with pytest.raises(UnknownQueue, match="nowhere"):
                await aenqueue(c, "nowhere", {})
            async with c.transaction():
                with pytest.raises(UnknownQueue, match="nowhere"):
                    await aenqueue(c, "nowhere", {})
                cur = await c.execute("SELECT 1")
                assert await cur.fetchone() == (1,)

    asyncio.run(go())


def test_a_queue_made_again_skips_the_ids_of_its_old_job_rows(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """pgmq.drop_queue leaves job rows; the new queue's ids start past them, whoever made it."""
    old = enqueue_batch(conn, RESIZE, [{"image_id": i, "width": 1} for i in range(3)])
    top = max(s.msg_id for s in old)
    seq = "SELECT pg_sequence_last_value(pg_get_serial_sequence('pgmq.q_resize', 'msg_id'))"
    pgmq.ensure_queue(conn, "resize")  # a healthy queue: nothing moves
    assert conn.execute(seq).fetchone() == (top,)
    conn.execute("SELECT pgmq.drop_queue('resize')")
    conn.execute("SELECT pgmq.create('resize')")  # made again outside this project (SQL, dashboard)
    pgmq.ensure_queue(conn, "resize")  # as the worker and the web process do when they start
    new = enqueue(conn, RESIZE, {"image_id": 9, "width": 1})
    assert new.msg_id == top + 1
    raw = pgmq.send(conn, "resize", {"image_id": 10, "width": 1})
    assert raw == top + 2
    assert [job(conn, queue, s.msg_id)["id"] for s in old] == [s.job_id for s in old]  # history kept


def test_a_negative_delay_is_refused(conn: psycopg.Connection[Any], queue: str) -> None:
    """delay must be >= 0."""
    with pytest.raises(InvalidPayload, match="negative"):
        enqueue(conn, queue, {}, delay=-1)


def test_a_delayed_message_is_invisible_until_its_time(conn: psycopg.Connection[Any], queue: str) -> None:
    """delay hides the message for that many seconds."""
    enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, delay=30)
    [row] = rows(conn, queue)
    assert not row["visible"]


def test_a_batch_is_validated_whole_then_sent_in_one_statement(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """One bad payload refuses the whole batch; a good batch keeps order."""
    with pytest.raises(InvalidPayload):
        enqueue_batch(conn, RESIZE, [{"image_id": 1, "width": 1}, {"image_id": "bad", "width": 1}])
    assert rows(conn, queue) == []
    sent = enqueue_batch(conn, RESIZE, [{"image_id": i, "width": 1} for i in range(5)])
    assert [r["msg_id"] for r in rows(conn, queue)] == [s.msg_id for s in sent]
    assert [r["message"]["image_id"] for r in rows(conn, queue)] == list(range(5))  # message i is payload i
    assert enqueue_batch(conn, RESIZE, []) == []


def test_a_batch_refuses_what_enqueue_refuses_and_sends_nothing(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """A batch is encoded straight to JSON text: a non-object, a value JSON cannot hold, or one
    oversized payload refuses the whole batch before anything is written."""
    good = {"image_id": 1, "width": 2}
    bad_batches: list[tuple[list[Any], str]] = [
        ([good, "text"], "JSON object"),
        ([good, ["a", "list"]], "JSON object"),
        ([good, {"when": object()}], "cannot be stored"),
        ([good, {"score": float("nan")}], "cannot be stored"),
        ([good, {"blob": "x" * MAX_PAYLOAD_BYTES}], "over the"),
    ]
    for payloads, message in bad_batches:
        with pytest.raises(InvalidPayload, match=message):
            enqueue_batch(conn, queue, payloads)
    with pytest.raises(InvalidPayload, match="image_id"):
        enqueue_batch(conn, RESIZE, [Resize(image_id=1, width=1), {"image_id": "two", "width": 1}])
    assert rows(conn, queue) == []
    sent = enqueue_batch(conn, RESIZE, [Resize(image_id=7, width=8), {"image_id": "9", "width": 10}])
    assert [r["message"] for r in rows(conn, queue)] == [
        {"image_id": 7, "width": 8},
        {"image_id": 9, "width": 10},  # validated and coerced by the model
    ]
    # Two payloads of 0.6 MiB: the batch is over the limit, each one is not.
    big = [{"blob": "y" * (MAX_PAYLOAD_BYTES * 6 // 10)}, {"blob": "z" * (MAX_PAYLOAD_BYTES * 6 // 10)}]
    assert len(enqueue_batch(conn, queue, big)) == 2
    assert [len(r["message"]["blob"]) for r in rows(conn, queue)[-2:]] == [MAX_PAYLOAD_BYTES * 6 // 10] * 2
    plain = enqueue_batch(conn, queue, [{"text": "Grüße, 東京", "n": 1.5, "none": None}])
    assert rows(conn, queue)[-1]["message"] == {"text": "Grüße, 東京", "n": 1.5, "none": None}
    assert len(sent) == 2 and len(plain) == 1


def test_the_async_twin_sends_on_an_async_connection(
    db_url: str, conn: psycopg.Connection[Any], queue: str
) -> None:
    """aenqueue works the same way for FastAPI handlers."""

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            sent = await aenqueue(aconn, RESIZE, {"image_id": 9, "width": 9})
            with pytest.raises(UnknownQueue):
                await aenqueue(aconn, "nowhere", {})
            return sent.msg_id

    msg_id = asyncio.run(go())
    assert [r["msg_id"] for r in rows(conn, queue)] == [msg_id]


def test_enqueue_creates_a_queued_job_row_with_owner_and_key(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """The job row is written with the message: status queued, the owner and the idempotency key."""
    owner = uuid.uuid4()
    sent = enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, owner=str(owner), idempotency_key="img-1")
    assert sent.created
    row = job(conn, queue, sent.msg_id)
    assert row["id"] == sent.job_id
    assert (row["status"], row["owner"], row["idempotency_key"]) == ("queued", owner, "img-1")


def test_a_second_enqueue_with_an_active_key_returns_the_first_job(
    conn: psycopg.Connection[Any], queue: str
) -> None:
    """Same key while the first job is unfinished: the first job back, no second message."""
    first = enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, idempotency_key="k")
    again = enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, idempotency_key="k")
    assert (again.job_id, again.msg_id, again.created) == (first.job_id, first.msg_id, False)
    assert len(rows(conn, queue)) == 1
    conn.execute("UPDATE pgmq_worker.jobs SET status = 'succeeded' WHERE id = %s", (first.job_id,))
    later = enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, idempotency_key="k")
    assert later.created
    assert later.job_id != first.job_id


def test_concurrent_enqueues_with_one_key_make_one_job(
    db_url: str, conn: psycopg.Connection[Any], queue: str
) -> None:
    """Two transactions racing with the same key: one job, one message; the loser gets the winner's job."""
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        first = enqueue(a, RESIZE, {"image_id": 1, "width": 1}, idempotency_key="race")
        results: list[Any] = []

        def second() -> None:
            results.append(enqueue(b, RESIZE, {"image_id": 1, "width": 1}, idempotency_key="race"))
            b.commit()

        t = threading.Thread(target=second)
        t.start()  # blocks on the unique index until `a` commits
        time.sleep(0.3)
        a.commit()
        t.join(10)
    [lost] = results
    assert (lost.job_id, lost.created) == (first.job_id, False)
    assert len(rows(conn, queue)) == 1
    count = conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE idempotency_key = 'race'").fetchone()
    assert count == (1,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"owner": "not-a-uuid"}, "owner must be a UUID"), ({"idempotency_key": ""}, "idempotency_key")],
)
def test_bad_owner_or_key_is_refused(
    conn: psycopg.Connection[Any], queue: str, kwargs: dict[str, Any], message: str
) -> None:
    """A malformed owner or key is refused before anything is written."""
    with pytest.raises(InvalidPayload, match=message):
        enqueue(conn, RESIZE, {"image_id": 1, "width": 1}, **kwargs)
    assert rows(conn, queue) == []


def test_a_batch_makes_a_job_row_per_message(conn: psycopg.Connection[Any], queue: str) -> None:
    """enqueue_batch writes one queued job row per message, matched by msg_id, in payload order."""
    owner = uuid.uuid4()
    payloads = [{"image_id": i, "width": 1} for i in range(50)]
    sent = enqueue_batch(conn, RESIZE, payloads, owner=owner)
    bodies = {r["msg_id"]: r["message"] for r in rows(conn, queue)}
    assert [bodies[s.msg_id] for s in sent] == payloads
    for s in sent:
        row = job(conn, queue, s.msg_id)
        assert (row["id"], row["status"], row["owner"]) == (s.job_id, "queued", owner)
    ids = {s.job_id for s in sent}
    assert len(ids) == len(payloads)
    assert {i.version for i in ids} == {7}  # time-ordered (queues.ids), stamped with the enqueue's time
    stamped = {int(i.hex[:12], 16) for i in ids}
    assert len(stamped) == 1
    assert abs(stamped.pop() - time.time() * 1000) < 60_000


def test_workers_starting_at_once_on_a_new_queue_create_it_once(db_url: str) -> None:
    """ensure_queue from several connections at once: no UniqueViolation, one of them creates it."""
    barrier = threading.Barrier(6)
    results: list[bool | BaseException] = []

    def start() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            barrier.wait(timeout=10)
            try:
                results.append(pgmq.ensure_queue(c, "fresh_queue"))
            except BaseException as exc:  # reported by the assertion below
                results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(map(repr, results)) == sorted(["True"] + ["False"] * 5)
