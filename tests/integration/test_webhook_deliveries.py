"""Webhook deliveries as rows (pgmq_worker.webhook_deliveries, migration 0024): one per event,
updated as its tries go, bounded and storable whatever the receiver says, never stopping a worker,
gone with their job.

The receiver is test_webhooks' local HTTP server; the jobs run on a real burst worker.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from db import storable
from db.backoff import Backoff
from db.connect import Target, async_pool
from queues import enqueue, pgmq
from queues.retention import prune
from tests.integration.test_privileges import as_role, refused, roles
from tests.integration.test_webhooks import SECRET, hooked_job, receiver
from tests.support.helpers import captured
from tests.support.values import ANY_CHAR
from worker.store import webhook_deliveries
from worker.store.webhook_deliveries import MAX_ERROR_CHARS, Delivery, error_text
from worker.webhook_records import DeliveryRecords
from worker.webhooks import Event, Webhooks

__all__ = ["receiver", "roles"]  # fixtures, used by name

ROWS = "SELECT * FROM pgmq_worker.webhook_deliveries WHERE job_id = %s ORDER BY event"


def rows(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's delivery rows, by event name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(ROWS, (job_id,)).fetchall()


def test_each_event_is_one_row_delivered_with_its_webhook_id(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """`job.running` and `job.succeeded`: delivered at the first try, 200, the id the receiver got."""
    sent = hooked_job(target, conn, receiver.url)
    running, succeeded = rows(conn, sent.job_id)
    assert (running["event"], succeeded["event"]) == ("job.running", "job.succeeded")
    assert {r["webhook_id"] for r in (running, succeeded)} == {h["webhook-id"] for h, _ in receiver.received}
    for row in (running, succeeded):
        assert (row["result"], row["tries"], row["status_code"], row["error"]) == ("delivered", 1, 200, None)
        assert row["first_tried_at"] == row["last_tried_at"]
        assert 0 < row["duration_ms"] < 5000


def test_a_retried_event_is_one_row_counting_its_tries(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """503 then 200: the event's row says delivered after 2 tries, the last try's answer (200, no error)."""
    receiver.answers = [503]
    sent = hooked_job(target, conn, receiver.url)
    found = rows(conn, sent.job_id)
    assert len(found) == 2
    assert sorted(r["tries"] for r in found) == [1, 2]
    retried = next(r for r in found if r["tries"] == 2)
    assert (retried["result"], retried["status_code"], retried["error"]) == ("delivered", 200, None)
    assert retried["last_tried_at"] > retried["first_tried_at"]


def test_a_failed_event_keeps_the_receivers_answer_bounded_and_storable(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """Two 500s answered with a huge body of NUL, invalid UTF-8 and control characters: the row says
    failed after 2 tries, with the answer's start as one storable line of at most 500 characters;
    the job succeeded and its failure counter (pgmq-worker stats) still counts both events."""
    receiver.answers = [500] * 4
    receiver.answer_body = b"oops\x00\xff\xfe\r\n\x1b[31mred\x07" + b"x" * 5_000_000
    sent = hooked_job(target, conn, receiver.url, webhook_max_tries=2)
    found = rows(conn, sent.job_id)
    assert [(r["result"], r["tries"], r["status_code"]) for r in found] == [("failed", 2, 500)] * 2
    for row in found:
        error = row["error"]
        assert error.startswith("HTTP 500: oops\\x00\ufffd\ufffd \\x1b[31mred\\x07xxx")
        assert len(error) == MAX_ERROR_CHARS and error.endswith("\u2026")
    job = conn.execute(
        "SELECT status, webhook_failures FROM pgmq_worker.jobs WHERE id = %s", (sent.job_id,)
    ).fetchone()
    assert job == ("succeeded", 2)


def test_a_refused_destination_is_recorded_refused(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """A loopback URL without PGMQ_WORKER_WEBHOOK_ALLOW_PRIVATE: refused at the first try, the reason kept."""
    sent = hooked_job(target, conn, receiver.url, webhook_allow_private=False)
    found = rows(conn, sent.job_id)
    assert [(r["result"], r["tries"], r["status_code"]) for r in found] == [("refused", 1, None)] * 2
    assert all("non-public address (127.0.0.1)" in r["error"] for r in found)


def test_a_database_error_while_recording_never_stops_the_worker(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """Every row write fails (a constraint refuses it): logged as webhook.not_recorded, the events are
    still delivered and the job succeeds."""
    conn.execute(
        "ALTER TABLE pgmq_worker.webhook_deliveries ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
    )
    with captured() as logs:
        sent = hooked_job(target, conn, receiver.url)
    assert len(receiver.received) == 2
    not_recorded = [e for e in logs if e["event"] == "webhook.not_recorded"]
    assert len(not_recorded) == 2 and "refuse_all" in not_recorded[0]["error"]
    assert rows(conn, sent.job_id) == []
    status = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE id = %s", (sent.job_id,)).fetchone()
    assert status == ("succeeded",)


def test_an_event_of_a_job_that_is_gone_is_delivered_and_not_recorded(target: Target, receiver: Any) -> None:
    """A job deleted before its event is recorded: no row (the foreign key is not tripped), no error."""

    async def go() -> None:
        async with async_pool(target, min_size=1, max_size=1) as pool:
            hooks = Webhooks(SECRET, allow_private=True, record=DeliveryRecords(pool).record)
            hooks.send(Event(receiver.url, str(uuid.uuid4()), "running", {}))
            await hooks.close(grace_s=10)

    with captured() as logs:
        asyncio.run(go())
    assert len(receiver.received) == 1
    assert [e["event"] for e in logs] == []


def test_an_event_between_two_tries_is_pending_with_its_last_answer(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """After a 503 and before the retry (a long backoff), the row says pending, 1 try, the 503."""
    receiver.answers = [503]
    receiver.answer_body = b"busy"
    pgmq.ensure_queue(conn, "pending_hooks")
    job_id = enqueue(conn, "pending_hooks", {}, webhook_url=receiver.url).job_id

    async def go() -> None:
        async with async_pool(target, min_size=1, max_size=1) as pool:
            hooks = Webhooks(
                SECRET, allow_private=True, backoff=Backoff(30.0, cap=30.0, jitter=0),
                record=DeliveryRecords(pool).record,
            )  # fmt: skip
            hooks.send(Event(receiver.url, str(job_id), "running", {}))
            for _ in range(100):
                if rows(conn, job_id):
                    break
                await asyncio.sleep(0.05)
            await hooks.close(grace_s=0)  # dropped before its second try

    asyncio.run(go())
    [row] = rows(conn, job_id)
    assert (row["result"], row["tries"], row["status_code"]) == ("pending", 1, 503)
    assert row["error"] == "HTTP 503: busy"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(ANY_CHAR, max_size=60), st.text(ANY_CHAR, min_size=480, max_size=3000)))
def test_any_error_text_is_stored_one_line_bounded_and_read_back_as_written(
    conn: psycopg.Connection[Any], text: str
) -> None:
    """Whatever an exception or a receiver says (NUL, lone surrogates, control characters, any
    length): the row holds it as error_text made it, one line, at most MAX_ERROR_CHARS."""
    made = error_text(text)
    assert storable.check_text(made) == made
    assert len(made) <= MAX_ERROR_CHARS
    assert made == made.strip() and not any(ch in made for ch in "\n\r\t\x00\x1b\x7f\x85")
    pgmq.ensure_queue(conn, "hyp_hooks")
    job_id = enqueue(conn, "hyp_hooks", {}).job_id
    now = datetime.now(UTC)
    delivery = Delivery("msg_hyp", str(job_id), "job.running", now, now)
    delivery.tried(now, 1.0, None, text)

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as aconn:
            await webhook_deliveries.record(aconn, delivery)

    asyncio.run(write())
    stored = conn.execute("SELECT error FROM pgmq_worker.webhook_deliveries WHERE webhook_id = 'msg_hyp'")
    assert stored.fetchone() == (made,)
    conn.execute("DELETE FROM pgmq_worker.jobs WHERE id = %s", (job_id,))  # its row goes with it


def test_prune_deletes_deliveries_with_their_jobs_through_the_index(conn: psycopg.Connection[Any]) -> None:
    """20,000 finished jobs with a delivery each, 1% old: prune takes the old ones' deliveries by
    ON DELETE CASCADE, and the cascade's own delete (auto_explain) looks them up by index."""
    conn.execute(
        "INSERT INTO pgmq_worker.jobs (queue, msg_id, status, finished_at) SELECT 'hooks_old', g,"
        " 'succeeded', now() - CASE WHEN g % 100 = 0 THEN interval '9 days' ELSE interval '1 hour' END"
        " FROM generate_series(1, 20000) AS g"
    )
    conn.execute(
        "INSERT INTO pgmq_worker.webhook_deliveries"
        " (webhook_id, job_id, event, result, tries, first_tried_at, last_tried_at)"
        " SELECT 'msg_' || msg_id, id, 'job.succeeded', 'delivered', 1, now(), now()"
        " FROM pgmq_worker.jobs WHERE queue = 'hooks_old'"
    )
    conn.execute("ANALYZE pgmq_worker.jobs")
    conn.execute("ANALYZE pgmq_worker.webhook_deliveries")
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("LOAD 'auto_explain'")
    [pruned] = prune(conn, timedelta(days=7), "hooks_old", batch=150)  # two batches
    conn.execute("SET auto_explain.log_min_duration = -1")
    assert pruned.jobs == 200
    left = conn.execute("SELECT count(*) FROM pgmq_worker.webhook_deliveries").fetchone()
    assert left == (19_800,)
    cascades = [p for p in plans if "webhook_deliveries" in p and "DELETE" in p]
    assert cascades, plans[:5]
    assert all("webhook_deliveries_job_idx" in p and "Seq Scan" not in p for p in cascades), cascades[0]


def test_the_worker_role_records_and_the_web_role_only_reads(
    db_url: str, target: Target, conn: psycopg.Connection[Any], receiver: Any, roles: dict[str, str]
) -> None:
    """A burst worker as the worker role writes the rows; the web role reads them and may not write;
    the sender may not read them; nobody but the owner deletes (the rows go with their job)."""
    worker = Target(as_role(db_url, roles["worker"]), transaction_pooler=False)
    sent = hooked_job(worker, conn, receiver.url)
    assert [r["result"] for r in rows(conn, sent.job_id)] == ["delivered", "delivered"]
    web = as_role(db_url, roles["web"])
    with psycopg.connect(web, autocommit=True) as reader:
        assert reader.execute("SELECT count(*) FROM pgmq_worker.webhook_deliveries").fetchone() == (2,)
    assert refused(web, "UPDATE pgmq_worker.webhook_deliveries SET tries = 0")
    assert refused(as_role(db_url, roles["sender"]), "SELECT * FROM pgmq_worker.webhook_deliveries")
    assert refused(as_role(db_url, roles["worker"]), "DELETE FROM pgmq_worker.webhook_deliveries")
