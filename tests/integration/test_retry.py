"""Retry and replay of dead jobs: the same job id again, its dead letter gone; bulk; purge; bad input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.backoff import Backoff
from db.connect import Target
from queues import enqueue, load_catalog, pgmq
from queues.names import dlq_name
from queues.retry import purge, replay, retry
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, rows, send
from tests.support.tokens import SECRET, bearer
from web import create_app
from web.settings import WebSettings
from worker import Context, Permanent, Registry, handler
from worker.cli import main

ADMIN_TOKEN = "admin-token-of-some-thirty-chars"
FAST = Backoff(base=0.01, cap=0.01, jitter=0)


def cli(url: str, *args: str) -> Result:
    env = {"DATABASE_URL": url, "PGMQ_WORKER_LOG_LEVEL": "warning"}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def last_json(result: Result) -> dict[str, Any]:
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def job_row(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM pgmq_worker.jobs WHERE id = %s", (job_id,))
    cols = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(cols, row, strict=True))


def make_queue(conn: psycopg.Connection[Any], queue: str) -> None:
    """The queue and its dead-letter queue, as a worker starting on it makes them."""
    pgmq.ensure_queue(conn, queue)
    pgmq.ensure_queue(conn, dlq_name(queue))


def healing_handler(
    conn: psycopg.Connection[Any], reg: Registry, queue: str, fail_until: dict[str, int]
) -> list[tuple[str, int]]:
    """A handler that fails while `fail_until["n"]` > 0 calls, then succeeds (its queues made)."""
    make_queue(conn, queue)
    calls: list[tuple[str, int]] = []

    @handler(queue, registry=reg, max_attempts=2, backoff=FAST)
    async def heal(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        calls.append((str(ctx.job.job_id) if ctx.job else "", ctx.attempt))
        if fail_until["n"] > 0:
            fail_until["n"] -= 1
            raise ValueError(f"broken {payload.get('n')}")
        return {"ok": payload.get("n")}

    return calls


def test_a_dead_job_retried_runs_again_under_its_own_id(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Retry sends the same job again (attempts, error reset; history kept; dead letter gone); it succeeds."""
    broken = {"n": 2}
    calls = healing_handler(conn, reg, "heal", broken)
    sent = enqueue(conn, "heal", {"n": 7})
    burst_worker(reg)
    before = job_row(conn, sent.job_id)
    assert before["status"] == "dead"
    assert before["attempts"] == 2
    assert len(dead(conn, "heal")) == 1
    # A cancel asked while it ran, before it died: the new run must not inherit it.
    conn.execute("UPDATE pgmq_worker.jobs SET cancel_requested_at = now() WHERE id = %s", (sent.job_id,))

    outcome = retry(conn, sent.job_id)
    assert outcome.retried
    assert outcome.msg_id != sent.msg_id
    queued = job_row(conn, sent.job_id)
    assert (queued["status"], queued["attempts"], queued["error"], queued["finished_at"]) == (
        "queued",
        0,
        None,
        None,
    )
    assert queued["msg_id"] == outcome.msg_id
    assert queued["cancel_requested_at"] is None
    [earlier] = queued["history"]
    assert earlier["msg_id"] == sent.msg_id
    assert earlier["attempts"] == 2
    assert earlier["error"]["type"] == "ValueError"
    assert dead(conn, "heal") == []
    assert [r["message"] for r in rows(conn, "heal")] == [{"n": 7}]

    burst_worker(reg)
    done = job_row(conn, sent.job_id)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"ok": 7})
    assert calls[-1] == (str(sent.job_id), 1)
    assert rows(conn, "heal") == []


def test_only_dead_jobs_are_retried(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A queued job is `not_dead`, an unknown id `unknown`, a purged dead letter `no_dead_letter`."""
    healing_handler(conn, reg, "heal", {"n": 2})
    queued = enqueue(conn, "heal", {"n": 1})
    assert retry(conn, queued.job_id).outcome == "not_dead"
    assert retry(conn, uuid.uuid4()).outcome == "unknown"
    burst_worker(reg)
    assert job_row(conn, queued.job_id)["status"] == "dead"
    assert purge(conn, "heal") == 1
    gone = retry(conn, queued.job_id)
    assert (gone.outcome, gone.status) == ("no_dead_letter", "dead")
    assert job_row(conn, queued.job_id)["status"] == "dead"


def test_bulk_replay_by_error_type_leaves_the_others(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """`replay(error_type=...)` sends back only the matching dead letters, each under its job id."""

    make_queue(conn, "mixed")

    @handler("mixed", registry=reg, max_attempts=1)
    async def mixed(payload: dict[str, Any], ctx: Context) -> None:
        if payload["kind"] == "timeout":
            raise TimeoutError("slow provider")
        raise Permanent("bad input")

    timeouts = [enqueue(conn, "mixed", {"kind": "timeout", "i": i}).job_id for i in range(3)]
    permanent = enqueue(conn, "mixed", {"kind": "permanent"}).job_id
    burst_worker(reg)
    assert len(dead(conn, "mixed")) == 4
    replayed = replay(conn, "mixed", error_type="TimeoutError")
    assert sorted(str(r.job_id) for r in replayed) == sorted(str(j) for j in timeouts)
    assert {r["error"]["type"] for r in dead(conn, "mixed")} == {"Permanent"}
    assert {job_row(conn, j)["status"] for j in timeouts} == {"queued"}
    assert job_row(conn, permanent)["status"] == "dead"
    assert len(rows(conn, "mixed")) == 3


def test_dead_letters_without_job_rows_replay_as_plain_messages(conn: psycopg.Connection[Any]) -> None:
    """A record another client parked (no msg_id, no job) goes back as its payload; a bare one as itself."""
    send(conn, "plain", {"x": 1})  # makes the queue
    send(conn, "plain_dlq", {"payload": {"x": 2}, "error": {"type": "E"}}, {"bare": True})
    replayed = replay(conn, "plain")
    assert [r.job_id for r in replayed] == [None, None]
    assert [r["message"] for r in rows(conn, "plain")][1:] == [{"x": 2}, {"bare": True}]
    assert dead(conn, "plain") == []


def test_cli_retry_and_bulk_replay_and_purge(
    db_url: str, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """`retry JOB_ID`, `dlq replay Q --error-type`, `dlq purge Q --older-than` do what they say."""
    healing_handler(conn, reg, "heal", {"n": 100})
    first, second, third = (enqueue(conn, "heal", {"n": i}) for i in range(3))
    burst_worker(reg)
    result = cli(db_url, "retry", str(first.job_id))
    assert result.exit_code == 0, result.output
    assert last_json(result)["outcome"] == "retried"
    again = cli(db_url, "retry", str(first.job_id), str(uuid.uuid4()))
    assert again.exit_code == 1
    assert "2 of 2 not retried" in again.output
    assert "not dead" in again.output
    replayed = cli(db_url, "dlq", "replay", "heal", "--error-type", "ValueError")
    assert last_json(replayed)["replayed"] == 2
    assert sorted(last_json(replayed)["job_ids"]) == sorted([str(second.job_id), str(third.job_id)])
    burst_worker(reg)  # all three die again
    assert len(dead(conn, "heal")) == 3
    conn.execute(
        "UPDATE pgmq.q_heal_dlq SET enqueued_at = now() - interval '8 days' WHERE msg_id = "
        "(SELECT min(msg_id) FROM pgmq.q_heal_dlq)"
    )
    purged = cli(db_url, "dlq", "purge", "heal", "--older-than", "7d")
    assert last_json(purged) == {"queue": "heal", "purged": 1}
    assert len(dead(conn, "heal")) == 2
    assert last_json(cli(db_url, "dlq", "purge", "heal"))["purged"] == 2


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("retry",), 2, "Missing argument"),
        (("retry", "not-a-uuid"), 2, "not a valid UUID"),
        (("dlq", "replay", "heal"), 2, "--all"),
        (("dlq", "replay", "heal", "--all", "--msg-id", "1"), 2, "exclude"),
        (("dlq", "replay", "heal", "--msg-id", "0"), 2, "--msg-id"),
        (("dlq", "replay", "Bad-Name", "--all"), 1, "lowercase"),
        (("dlq", "replay", "ghost", "--all"), 1, "has no dead-letter queue"),
        (("dlq", "purge", "ghost"), 1, "has no dead-letter queue"),
        (("dlq", "purge", "heal", "--older-than", "soon"), 2, "a number with units"),
        (("dlq", "purge", "heal", "--older-than", "-1"), 2, "negative"),
    ],
)
def test_bad_cli_input(db_url: str, args: tuple[str, ...], code: int, fragment: str) -> None:
    """Each bad argument exits non-zero with one message and no traceback."""
    result = cli(db_url, *args)
    assert result.exit_code == code, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=40))
def test_any_older_than_text_is_a_duration_or_a_usage_error(db_url: str, text: str) -> None:
    """Whatever --older-than says, purge either runs or exits 2 with a message; never a traceback."""
    result = CliRunner().invoke(
        main, ["dlq", "purge", "text_stats", "--older-than", text], env={"DATABASE_URL": db_url}
    )
    assert result.exit_code in {0, 1, 2}, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# -- HTTP -------------------------------------------------------------------------------------------


@pytest.fixture
def api(target: Target) -> Iterator[TestClient]:
    app = create_app(
        target,
        settings=WebSettings(jwt_secret=SECRET, admin_token=ADMIN_TOKEN),
        catalog=load_catalog(["handlers"]),
    )
    with TestClient(app) as c:
        yield c


def test_post_retry_answers_200_409_404(
    api: TestClient, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The owner retries a dead job (200, queued); again: 409 with its status; others' and unknown: 404."""
    healing_handler(conn, reg, "heal", {"n": 2})
    user, stranger = uuid.uuid4(), uuid.uuid4()
    sent = enqueue(conn, "heal", {"n": 1}, owner=user)
    burst_worker(reg)
    assert api.post(f"/jobs/{sent.job_id}/retry", headers=bearer(stranger)).status_code == 404
    assert api.post(f"/jobs/{sent.job_id}/retry").status_code == 401
    ok = api.post(f"/jobs/{sent.job_id}/retry", headers=bearer(user))
    assert ok.status_code == 200, ok.text
    assert (ok.json()["id"], ok.json()["status"], ok.json()["attempts"]) == (str(sent.job_id), "queued", 0)
    again = api.post(f"/jobs/{sent.job_id}/retry", headers=bearer(user))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_dead"
    assert "queued" in again.json()["error"]["message"]
    for bad in (str(uuid.uuid4()), "nope", "%00", "1" * 300):
        assert api.post(f"/jobs/{bad}/retry", headers=bearer(user)).status_code == 404
    burst_worker(reg)
    assert job_row(conn, sent.job_id)["status"] == "succeeded"


def test_an_admin_retries_any_users_job(
    api: TestClient, conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """PGMQ_WORKER_ADMIN_TOKEN retries another user's dead job; a wrong admin token is 401."""
    healing_handler(conn, reg, "heal", {"n": 2})
    sent = enqueue(conn, "heal", {"n": 1}, owner=uuid.uuid4())
    burst_worker(reg)
    wrong = api.post(f"/jobs/{sent.job_id}/retry", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"})
    assert wrong.status_code == 401
    ok = api.post(f"/jobs/{sent.job_id}/retry", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "queued"


def test_a_retried_fan_out_child_counts_once_for_its_waiting_parent(conn: psycopg.Connection[Any]) -> None:
    """A dead child of an open fan-out is no longer counted failed once retried; its new end counts."""
    make_queue(conn, "kids")
    parent = enqueue(conn, "kids", {"parent": True})
    child = enqueue(conn, "kids", {"child": 0})
    conn.execute(
        "INSERT INTO pgmq_worker.fan_outs (parent_id, name, parent_queue, parent_msg_id, child_queue, total,"
        " max_running, deadline) VALUES (%s, 'kids', 'kids', %s, 'kids', 2, 2, now() + interval '1 h')",
        (parent.job_id, parent.msg_id),
    )
    conn.execute(
        "UPDATE pgmq_worker.jobs SET parent_id = %s, fan_out = 'kids', child_index = 0, status = 'dead',"
        " finished_at = now() WHERE id = %s",
        (parent.job_id, child.job_id),
    )
    conn.execute("DELETE FROM pgmq.q_kids WHERE msg_id = %s", (child.msg_id,))
    pgmq.send(conn, dlq_name("kids"), {"queue": "kids", "msg_id": child.msg_id, "payload": {"child": 0}})

    def counts() -> tuple[int, int]:
        row = conn.execute(
            "SELECT succeeded, failed FROM pgmq_worker.fan_outs WHERE parent_id = %s", (parent.job_id,)
        )
        found = row.fetchone()
        assert found is not None
        return int(found[0]), int(found[1])

    assert counts() == (0, 1)  # the child's death counted (migration 0011's trigger)
    assert retry(conn, child.job_id).retried
    assert counts() == (0, 0)
    conn.execute(
        "UPDATE pgmq_worker.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (child.job_id,)
    )
    assert counts() == (1, 0)
