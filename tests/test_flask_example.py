"""The Flask blueprint answers like the FastAPI app, and the three-line pattern is transactional."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg_pool import ConnectionPool

import handlers  # noqa: F401  (declares text_stats)
from db.connect import Target, sync_pool
from queues import enqueue, pgmq
from queues.enqueue import MAX_PAYLOAD_BYTES
from queues.jobs import get_job
from tests.helpers import rows
from web.auth import Auth
from web.flask_example import create_app, jobs_blueprint

SECRET = "flask-test-secret-of-32-characters"
ALICE, BOB = uuid.UUID(int=11), uuid.UUID(int=12)


def bearer(sub: uuid.UUID, *, expires_in: float = 3600) -> dict[str, str]:
    claims = {"sub": str(sub), "aud": "authenticated", "exp": time.time() + expires_in}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture
def pool(target: Target, conn: psycopg.Connection[Any]) -> Iterator[ConnectionPool]:
    pgmq.ensure_queue(conn, "text_stats")
    p = sync_pool(target, min_size=1, max_size=2)
    p.open()
    yield p
    p.close()


def client_for(pool: ConnectionPool, auth: Auth | None = None) -> FlaskClient:
    app = Flask(__name__)
    app.register_blueprint(jobs_blueprint(pool, auth=auth))
    return app.test_client()


def written(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
    assert row is not None
    return int(row[0]), len(rows(conn, "text_stats"))


def test_post_and_get_match_the_job_row(pool: ConnectionPool, conn: psycopg.Connection[Any]) -> None:
    """202 with a Location; the job is queued with its message; GET shows the row's JSON."""
    client = client_for(pool)
    answer = client.post("/jobs/text_stats", json={"text": "flask"})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    body = answer.get_json()
    assert answer.headers["Location"] == f"/jobs/{body['job_id']}"
    [message] = rows(conn, "text_stats")
    assert message["msg_id"] == body["msg_id"]
    shown = client.get(body["status_url"])
    stored = get_job(conn, uuid.UUID(body["job_id"]))
    assert stored is not None and stored.status == "queued"
    assert shown.get_json() == stored.as_json()


@pytest.mark.parametrize(
    ("path", "data", "status", "code"),
    [
        ("/jobs/text_stats", b"{nope", 400, "invalid_json"),
        ("/jobs/text_stats", b'{"text": ""}', 422, "invalid_payload"),
        ("/jobs/no_such_queue", b"{}", 404, "unknown_queue"),
        ("/jobs/text_stats?delay=x", b'{"text": "a"}', 400, "bad_request"),
        ("/jobs/text_stats", b'{"text": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', 413, "payload_too_large"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    pool: ConnectionPool, conn: psycopg.Connection[Any], path: str, data: bytes, status: int, code: str
) -> None:
    """The same 4xx and error codes as the FastAPI app; no job, no message."""
    answer = client_for(pool).post(path, data=data, content_type="application/json")
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"] == code
    assert written(conn) == (0, 0)


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_jobs_are_404(pool: ConnectionPool, job_id: str) -> None:
    """No such job (or no UUID): 404 unknown_job."""
    answer = client_for(pool).get(f"/jobs/{job_id}")
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "unknown_job"


def test_idempotency_key_returns_the_first_job(pool: ConnectionPool, conn: psycopg.Connection[Any]) -> None:
    """Idempotency-Key twice: one job, one message."""
    client = client_for(pool)
    first = client.post("/jobs/text_stats", json={"text": "a"}, headers={"Idempotency-Key": "k1"}).get_json()
    again = client.post("/jobs/text_stats", json={"text": "a"}, headers={"Idempotency-Key": "k1"}).get_json()
    assert again["job_id"] == first["job_id"] and again["created"] is False
    assert written(conn) == (1, 1)


def test_with_auth_the_owner_is_recorded_and_only_they_see_the_job(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """No or expired token: 401 and nothing written; the owner sees the job, another user gets 404."""
    client = client_for(pool, Auth(SECRET))
    missing = client.post("/jobs/text_stats", json={"text": "a"})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    expired = client.post("/jobs/text_stats", json={"text": "a"}, headers=bearer(ALICE, expires_in=-10))
    assert expired.status_code == 401
    assert written(conn) == (0, 0)
    body = client.post("/jobs/text_stats", json={"text": "a"}, headers=bearer(ALICE)).get_json()
    stored = get_job(conn, uuid.UUID(body["job_id"]))
    assert stored is not None and stored.owner == ALICE
    assert client.get(body["status_url"], headers=bearer(ALICE)).status_code == 200
    assert client.get(body["status_url"], headers=bearer(BOB)).status_code == 404
    assert client.get(body["status_url"]).status_code == 401


def test_the_three_line_pattern_rolls_back_with_the_callers_transaction(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """An enqueue inside the caller's transaction disappears, message and job, when it rolls back."""

    class Boom(Exception):
        pass

    def upload_then_fail() -> None:
        with pool.connection() as c, c.transaction():
            c.execute("CREATE TABLE uploads (id int)")
            enqueue(c, "text_stats", {"text": "never"})
            raise Boom

    with pytest.raises(Boom):
        upload_then_fail()
    assert written(conn) == (0, 0)
    with pool.connection() as c, c.transaction():
        c.execute("CREATE TABLE uploads (id int)")
        c.execute("INSERT INTO uploads VALUES (1)")
        enqueue(c, "text_stats", {"text": "kept"})
    assert written(conn) == (1, 1)


def test_the_example_app_serves_the_blueprint(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """create_app() wires the pool, the handlers' catalog and /healthz."""
    pgmq.ensure_queue(conn, "text_stats")
    app = create_app(db_url)
    try:
        client = app.test_client()
        assert client.get("/healthz").get_json() == {"status": "ok"}
        assert client.post("/jobs/text_stats", json={"text": "x", "top": 0}).status_code == 422
        assert client.post("/jobs/text_stats", json={"text": "x"}).status_code == 202
    finally:
        app.extensions["pgmq_worker_pool"].close()
