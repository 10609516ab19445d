"""The worker's read: pgmq.read's own statement on the queue's table, prepared instead of planned per call."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from db.connect import Target, aconnect
from db.pgmq_install import detect
from queues import enqueue, pgmq
from queues.names import table_name
from tests.support.helpers import job, job_or_none, rows
from worker.store import deliveries, settles
from worker.store.deliveries import Message


def read(target: Target, queue: str, vt_s: int, qty: int, *, job_rows: bool = True) -> list[Message]:
    """deliveries.read on a new async connection, as often as asked (psycopg prepares at the 5th)."""

    async def go() -> list[Message]:
        async with await aconnect(target) as aconn:
            return await deliveries.read(aconn, queue, vt_s, qty, job_rows=job_rows)

    return asyncio.run(go())


def last_read_at(conn: psycopg.Connection[Any], queue: str) -> dict[int, datetime | None]:
    query = sql.SQL("SELECT msg_id, last_read_at FROM pgmq.{} ORDER BY msg_id").format(
        sql.Identifier(table_name(queue))
    )
    return {int(r[0]): r[1] for r in conn.execute(query).fetchall()}


@pytest.mark.parametrize("job_rows", [True, False], ids=["job rows", "no job rows"])
def test_the_read_leases_what_pgmq_read_would(
    target: Target, conn: psycopg.Connection[Any], job_rows: bool
) -> None:
    """Visible messages only, oldest first, up to qty; each hidden for vt_s with read_ct + 1."""
    pgmq.ensure_queue(conn, "leased")
    first, second, third = pgmq.send_batch(conn, "leased", [{"i": 1}, {"i": 2}, {"i": 3}])
    delayed = pgmq.send(conn, "leased", {"i": "later"}, delay_s=60)
    conn.execute("SELECT pgmq.read('leased', 60, 1)")  # another consumer holds the first

    before = datetime.now(UTC)
    taken = read(target, "leased", 30, 10, job_rows=job_rows)
    assert [(m.msg_id, m.read_ct, m.body) for m in taken] == [(second, 1, {"i": 2}), (third, 1, {"i": 3})]
    for message in taken:
        assert before + timedelta(seconds=29) < message.vt < datetime.now(UTC) + timedelta(seconds=31)
        assert (message.job_id is not None) == job_rows
    if job_rows:  # the read writes no job row: the ids are those the rows will be created with
        assert [job_or_none(conn, "leased", m.msg_id) for m in taken] == [None, None]
        assert len({m.job_id for m in taken}) == 2
    assert read(target, "leased", 30, 10, job_rows=job_rows) == []  # held now, and the rest by others
    left = {r["msg_id"]: (r["read_ct"], r["visible"]) for r in rows(conn, "leased")}
    assert left == {first: (1, False), second: (1, False), third: (1, False), delayed: (0, False)}

    conn.execute("UPDATE pgmq.q_leased SET vt = clock_timestamp() WHERE msg_id = %s", (second,))
    [again] = read(target, "leased", 30, 1, job_rows=job_rows)  # its lease ran out: delivered again
    assert (again.msg_id, again.read_ct) == (second, 2)


def has_last_read_at(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Whether the installed pgmq made the queue's table with last_read_at (1.10+)."""
    row = conn.execute(deliveries.HAS_LAST_READ_AT, ("pgmq." + table_name(queue),)).fetchone()
    return bool(row and row[0])


def test_the_read_stamps_last_read_at_like_pgmq_1_10(target: Target, conn: psycopg.Connection[Any]) -> None:
    """pgmq 1.10+ notes when a message was last read; the read keeps that column true."""
    pgmq.ensure_queue(conn, "stamped")
    if not has_last_read_at(conn, "stamped"):
        pytest.skip(f"pgmq {detect(conn).version} makes queue tables without last_read_at (1.10+ has it)")
    sent = pgmq.send(conn, "stamped", {"i": 1})
    assert last_read_at(conn, "stamped") == {sent: None}

    async def go() -> list[tuple[int, datetime | None]]:
        seen = []
        async with await aconnect(target) as aconn:
            for _ in range(7):  # past psycopg's prepare threshold: the prepared statement stamps too
                conn.execute("UPDATE pgmq.q_stamped SET vt = clock_timestamp()")
                [message] = await deliveries.read(aconn, "stamped", 30, 1)
                seen.append((message.read_ct, last_read_at(conn, "stamped")[sent]))
        return seen

    seen = asyncio.run(go())
    assert [read_ct for read_ct, _ in seen] == [1, 2, 3, 4, 5, 6, 7]
    stamps = [stamp for _, stamp in seen]
    assert None not in stamps
    assert stamps == sorted(stamps) and len(set(stamps)) == 7


@pytest.mark.parametrize("job_rows", [True, False], ids=["job rows", "no job rows"])
def test_the_read_works_on_queue_tables_from_before_pgmq_1_10(
    target: Target, conn: psycopg.Connection[Any], job_rows: bool
) -> None:
    """Supabase's pgmq (1.4/1.5) has no last_read_at column: the read leaves it out."""
    pgmq.ensure_queue(conn, "older")
    conn.execute("ALTER TABLE pgmq.q_older DROP COLUMN IF EXISTS last_read_at")  # a 1.10+ table made older
    sent = pgmq.send(conn, "older", {"i": 1})
    [message] = read(target, "older", 30, 5, job_rows=job_rows)
    assert (message.msg_id, message.read_ct, message.body) == (sent, 1, {"i": 1})
    assert rows(conn, "older")[0]["visible"] is False


def test_a_read_of_a_missing_queue_fails_and_is_asked_about_again(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """No table: the read fails as pgmq.read does, and nothing about the queue is remembered."""
    with pytest.raises(psycopg.errors.UndefinedTable, match="q_later"):
        read(target, "later", 30, 1)
    pgmq.ensure_queue(conn, "later")  # made afterwards, by a pgmq that stamps last_read_at
    sent = pgmq.send(conn, "later", {"i": 1})
    [message] = read(target, "later", 30, 1)
    assert message.msg_id == sent
    if has_last_read_at(conn, "later"):  # what a remembered "no table, no column" would have missed
        assert last_read_at(conn, "later")[sent] is not None


@pytest.mark.parametrize("job_rows", [True, False], ids=["job rows", "no job rows"])
def test_an_archiving_ack_of_a_held_delivery_settles_it(
    target: Target, conn: psycopg.Connection[Any], job_rows: bool
) -> None:
    """archive=True: the delivery still held is archived, the ack says so, its job is `succeeded`;
    a delivery no longer ours is neither archived nor acked."""
    pgmq.ensure_queue(conn, "archived")
    kept, stale = pgmq.send_batch(conn, "archived", [{"i": 1}, {"i": 2}])

    async def go() -> tuple[bool, bool]:
        async with await aconnect(target) as aconn:
            first, second = await deliveries.read(aconn, "archived", 30, 2, job_rows=job_rows)
            gone = dataclasses.replace(second, read_ct=second.read_ct + 1)  # another worker's delivery
            return (
                await settles.ack(aconn, first, {"ok": 1}, archive=True),
                await settles.ack(aconn, gone, {"ok": 2}, archive=True),
            )

    assert asyncio.run(go()) == (True, False)
    archived = conn.execute("SELECT msg_id FROM pgmq.a_archived ORDER BY msg_id").fetchall()
    assert archived == [(kept,)]
    assert [r["msg_id"] for r in rows(conn, "archived")] == [stale]
    if job_rows:
        assert (job(conn, "archived", kept)["status"], job(conn, "archived", kept)["result"]) == (
            "succeeded",
            {"ok": 1},
        )
        assert job_or_none(conn, "archived", stale) is None  # not ours: nothing written for it


def test_a_running_mark_is_written_once_per_delivery_and_never_after_it(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """mark_running makes the row `running` with the attempt's count and start (created with the
    read's id for a plain send, updated for an enqueued job); again, for a settled delivery, or for
    one read again since, it writes nothing."""
    pgmq.ensure_queue(conn, "marked")
    plain = pgmq.send(conn, "marked", {"i": 1})
    enqueued = enqueue(conn, "marked", {"i": 2})

    async def go() -> list[set[int]]:
        async with await aconnect(target) as aconn:
            first, second = await deliveries.read(aconn, "marked", 30, 2)
            marked = [await deliveries.mark_running(aconn, "marked", [first, second])]
            marked.append(await deliveries.mark_running(aconn, "marked", [first, second]))  # written
            assert await settles.ack(aconn, first, {"ok": 1}, archive=False)
            marked.append(await deliveries.mark_running(aconn, "marked", [first]))  # settled
            await aconn.execute("UPDATE pgmq.q_marked SET vt = clock_timestamp()")
            [again] = await deliveries.read(aconn, "marked", 30, 1)  # second's lease ran out
            assert (again.msg_id, again.read_ct, again.job_id) == (second.msg_id, 2, second.job_id)
            marked.append(await deliveries.mark_running(aconn, "marked", [second]))  # not ours now
            marked.append(await deliveries.mark_running(aconn, "marked", [again]))
            assert first.job_id == job(conn, "marked", plain)["id"]
            return marked

    assert asyncio.run(go()) == [{plain, enqueued.msg_id}, set(), set(), set(), {enqueued.msg_id}]
    done, running = job(conn, "marked", plain), job(conn, "marked", enqueued.msg_id)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"ok": 1})
    assert done["started_at"] is not None and done["created_at"] <= done["started_at"]
    assert (running["status"], running["attempts"], running["id"]) == ("running", 2, enqueued.job_id)


@pytest.mark.parametrize("spread", [False, True], ids=["ids close together", "ids spread out"])
def test_the_read_finds_each_messages_own_job_row_whether_its_ids_are_close_or_spread(
    target: Target, conn: psycopg.Connection[Any], spread: bool
) -> None:
    """Close ids are looked up with one range scan of (queue, msg_id), spread ones id by id; either
    way each delivery gets its own row (or a new id, for a plain send), never the row of another
    message in the range, here one another consumer holds."""
    pgmq.ensure_queue(conn, "lookup")
    first = enqueue(conn, "lookup", {"i": 1})
    held = enqueue(conn, "lookup", {"i": 2})
    plain = pgmq.send(conn, "lookup", {"i": 3})
    if spread:  # a gap of many ids, as a retried message among new ones leaves
        gone = pgmq.send_batch(conn, "lookup", [{} for _ in range(50)])
        conn.execute("SELECT pgmq.delete('lookup', %s::bigint[])", (gone,))
    last = enqueue(conn, "lookup", {"i": 4})
    conn.execute("SELECT pgmq.set_vt('lookup', %s, 60)", (held.msg_id,))  # another consumer's

    taken = read(target, "lookup", 30, 10)
    assert [m.msg_id for m in taken] == [first.msg_id, plain, last.msg_id]
    by_id = {m.msg_id: m.job_id for m in taken}
    assert by_id[first.msg_id] == first.job_id
    assert by_id[last.msg_id] == last.job_id
    assert by_id[plain] not in {first.job_id, held.job_id, last.job_id}
    assert job_or_none(conn, "lookup", plain) is None
