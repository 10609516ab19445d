"""The Flask blueprint answers exactly like the FastAPI app, and the three-line pattern is transactional."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from flask import Flask
from flask.testing import FlaskClient
from psycopg_pool import ConnectionPool

from db.connect import Target, sync_pool
from queues import enqueue, load_catalog, pgmq
from queues.enqueue import MAX_PAYLOAD_BYTES
from queues.jobs import get_job
from tests.support import tokens
from tests.support.helpers import rows
from web.app import create_app as create_fastapi_app
from web.auth import Auth
from web.flask_example import POOL_EXTENSION, create_app, jobs_blueprint
from web.settings import WebSettings

HANDLERS = load_catalog(["handlers"])  # the reference handlers' queues, as `python -m web` loads them

SECRET = "flask-test-secret-of-32-chars!!!"
ALICE, BOB = uuid.UUID(int=11), uuid.UUID(int=12)
OVERSIZED = b'{"text": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'


token = partial(tokens.token, secret=SECRET)
bearer = partial(tokens.bearer, secret=SECRET)


@pytest.fixture
def pool(target: Target, conn: psycopg.Connection[Any]) -> Iterator[ConnectionPool]:
    """A sync pool on the test database, whose text_stats queue exists (as a worker would create it)."""
    pgmq.ensure_queue(conn, "text_stats")
    p = sync_pool(target, min_size=1, max_size=2)
    p.open()
    yield p
    p.close()


def client_for(pool: ConnectionPool, auth: Auth | None = None, url_prefix: str = "") -> FlaskClient:
    """A Flask app with only the jobs blueprint, and its test client."""
    app = Flask(__name__)
    app.register_blueprint(jobs_blueprint(pool, catalog=HANDLERS, auth=auth, url_prefix=url_prefix))
    return app.test_client()


def written(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(job rows, text_stats messages)."""
    row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
    assert row is not None
    return int(row[0]), len(rows(conn, "text_stats"))


def test_post_enqueues_and_get_shows_the_job_row(pool: ConnectionPool, conn: psycopg.Connection[Any]) -> None:
    """202 with a Location; the job row is queued and its message is in pgmq; GET is the row's JSON."""
    client = client_for(pool)
    answer = client.post("/jobs/text_stats", json={"text": "flask"})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    body = answer.get_json()
    job_id = body["job_id"]
    assert answer.headers["Location"] == body["status_url"] == f"/jobs/{job_id}"
    assert "events_url" not in body  # the blueprint serves no event stream
    assert (body["queue"], body["created"]) == ("text_stats", True)
    [message] = rows(conn, "text_stats")
    assert message["msg_id"] == body["msg_id"]
    assert message["message"] == {"text": "flask", "top": 5}  # validated by the handler's model
    stored = get_job(conn, uuid.UUID(job_id))
    assert stored is not None
    assert (stored.status, stored.msg_id, stored.owner) == ("queued", body["msg_id"], None)
    shown = client.get(answer.headers["Location"])
    assert shown.status_code == 200
    assert shown.get_json() == stored.as_json()


@pytest.mark.parametrize(
    ("path", "data", "headers", "status", "code"),
    [
        ("/jobs/text_stats", b"{nope", {}, 400, "invalid_json"),
        ("/jobs/text_stats", b"", {}, 400, "invalid_json"),
        ("/jobs/text_stats", b'{"text": ""}', {}, 422, "invalid_payload"),
        ("/jobs/text_stats", b'{"text": "a", "extra": 1}', {}, 422, "invalid_payload"),
        ("/jobs/text_stats", b"[1, 2]", {}, 422, "invalid_payload"),
        ("/jobs/no_such_queue", b'{"text": "a"}', {}, 404, "unknown_queue"),
        ("/jobs/Bad-Name", b'{"text": "a"}', {}, 404, "unknown_queue"),
        ("/jobs/text_stats", OVERSIZED, {}, 413, "payload_too_large"),
        ("/jobs/text_stats?delay=x", b'{"text": "a"}', {}, 400, "bad_request"),
        ("/jobs/text_stats?delay=-1", b'{"text": "a"}', {}, 400, "bad_request"),
        ("/jobs/text_stats", b'{"text": "a"}', {"Idempotency-Key": "k" * 201}, 400, "bad_request"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    pool: ConnectionPool,
    conn: psycopg.Connection[Any],
    path: str,
    data: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Each bad request gets its status and error code in the JSON error body; no job, no message."""
    answer = client_for(pool).post(path, data=data, headers=headers, content_type="application/json")
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"] == code
    assert answer.get_json()["error"]["message"]
    assert written(conn) == (0, 0)


def test_a_huge_body_is_refused_after_reading_just_past_the_limit(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """A 16 MiB body: 413, and only MAX_PAYLOAD_BYTES + 1 bytes of it were read into memory."""
    size = 16 * MAX_PAYLOAD_BYTES
    stream = io.BytesIO(b"x" * size)
    answer = client_for(pool).post(
        "/jobs/text_stats", input_stream=stream, headers={"Content-Length": str(size)}
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "payload_too_large"
    assert stream.tell() == MAX_PAYLOAD_BYTES + 1
    assert written(conn) == (0, 0)


# Fixed ids: a random one differs between pytest-xdist workers, which then refuse to run.
@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown", "not-a-uuid"])
def test_unknown_or_malformed_job_ids_are_404(
    pool: ConnectionPool, conn: psycopg.Connection[Any], job_id: str
) -> None:
    """No such job, or an id that is no UUID: 404 unknown_job, and nothing written."""
    answer = client_for(pool).get(f"/jobs/{job_id}")
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "unknown_job"
    assert written(conn) == (0, 0)


def test_a_repeated_idempotency_key_returns_the_first_job(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """The same Idempotency-Key twice: the same job id, created=False, one job row and one message."""
    client = client_for(pool)
    sent = [
        client.post("/jobs/text_stats", json={"text": "a"}, headers={"Idempotency-Key": "k1"})
        for _ in range(2)
    ]
    assert [a.status_code for a in sent] == [202, 202]
    first, again = (a.get_json() for a in sent)
    assert again["job_id"] == first["job_id"]
    assert (first["created"], again["created"]) == (True, False)
    assert written(conn) == (1, 1)


def test_with_auth_a_token_is_required_and_the_owner_is_recorded(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """No, expired or malformed token: 401 with WWW-Authenticate, nothing written; else the owner is set."""
    client = client_for(pool, Auth(SECRET))
    for headers in ({}, bearer(ALICE, expires_in=-10), {"Authorization": "Basic abc"}):
        refused = client.post("/jobs/text_stats", json={"text": "a"}, headers=headers)
        assert refused.status_code == 401
        assert refused.get_json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="pgmq-worker"'
    assert written(conn) == (0, 0)
    answer = client.post("/jobs/text_stats", json={"text": "a"}, headers=bearer(ALICE))
    assert answer.status_code == 202
    stored = get_job(conn, uuid.UUID(answer.get_json()["job_id"]))
    assert stored is not None and stored.owner == ALICE
    assert written(conn) == (1, 1)


def test_with_auth_only_the_owner_sees_the_job(pool: ConnectionPool) -> None:
    """GET: the owner gets the job, another user the same 404 as for a missing job, no token a 401."""
    client = client_for(pool, Auth(SECRET))
    location = client.post("/jobs/text_stats", json={"text": "a"}, headers=bearer(ALICE)).headers["Location"]
    mine = client.get(location, headers=bearer(ALICE))
    assert mine.status_code == 200 and mine.get_json()["owner"] == str(ALICE)
    theirs = client.get(location, headers=bearer(BOB))
    assert theirs.status_code == 404
    assert theirs.get_json() == {"error": {"code": "unknown_job", "message": f"no job {location[6:]!r}"}}
    assert client.get(location, headers=bearer(ALICE, expires_in=-10)).status_code == 401
    assert client.get(location).status_code == 401


def test_with_auth_idempotency_keys_are_per_owner(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """The same key from two users makes two jobs: one user's key never hands back another's job."""
    client = client_for(pool, Auth(SECRET))

    def post(who: uuid.UUID) -> dict[str, Any]:
        key = {"Idempotency-Key": "shared", **bearer(who)}
        answer = client.post("/jobs/text_stats", json={"text": "a"}, headers=key)
        assert answer.status_code == 202
        body: dict[str, Any] = answer.get_json()
        return body

    alice, bob, alice_again = post(ALICE), post(BOB), post(ALICE)
    assert alice["job_id"] != bob["job_id"]
    assert alice_again["job_id"] == alice["job_id"] and alice_again["created"] is False
    assert written(conn) == (2, 2)


def test_url_prefix_is_in_the_routes_and_the_location(pool: ConnectionPool) -> None:
    """With url_prefix (or a prefix given to register_blueprint) the Location points where GET answers."""
    client = client_for(pool, url_prefix="/api")
    answer = client.post("/api/jobs/text_stats", json={"text": "a"})
    body = answer.get_json()
    assert answer.headers["Location"] == body["status_url"] == f"/api/jobs/{body['job_id']}"
    assert client.get(answer.headers["Location"]).get_json()["id"] == body["job_id"]

    app = Flask(__name__)
    app.register_blueprint(jobs_blueprint(pool, catalog=HANDLERS), url_prefix="/v1")
    mounted = app.test_client().post("/v1/jobs/text_stats", json={"text": "a"})
    assert mounted.headers["Location"].startswith("/v1/jobs/")


def test_the_three_line_pattern_rolls_back_with_the_callers_transaction(
    pool: ConnectionPool, conn: psycopg.Connection[Any]
) -> None:
    """A job enqueued in the caller's transaction disappears, job row and message, when it rolls back."""
    conn.execute("CREATE TABLE uploads (id int PRIMARY KEY)")

    class UploadFailed(Exception):
        """The caller's own error, after the enqueue."""

    def upload(upload_id: int, text: str, *, fail: bool) -> None:
        with pool.connection() as c, c.transaction():
            c.execute("INSERT INTO uploads VALUES (%s)", (upload_id,))
            enqueue(c, "text_stats", {"text": text})
            if fail:
                raise UploadFailed

    with pytest.raises(UploadFailed):
        upload(1, "never", fail=True)
    assert written(conn) == (0, 0)
    assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (0,)

    upload(1, "kept", fail=False)
    assert written(conn) == (1, 1)
    assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (1,)
    [message] = rows(conn, "text_stats")
    assert message["message"]["text"] == "kept"


@contextmanager
def fastapi_and_flask(
    target: Target, pool: ConnectionPool, secret: str | None
) -> Iterator[tuple[TestClient, FlaskClient]]:
    """Test clients of the FastAPI app and of the blueprint, on the same database and auth settings."""
    settings = WebSettings(jwt_secret=secret)
    with TestClient(create_fastapi_app(target, settings=settings, catalog=HANDLERS)) as api:
        yield api, client_for(pool, Auth(secret))


@pytest.mark.parametrize("secret", [None, SECRET])
def test_answers_match_the_fastapi_app(
    target: Target, pool: ConnectionPool, conn: psycopg.Connection[Any], secret: str | None
) -> None:
    """Status, JSON body and WWW-Authenticate are the same from both apps for every outcome."""
    auth = bearer(ALICE) if secret else {}
    requests: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("POST", "/jobs/text_stats", b"{nope", auth),
        ("POST", "/jobs/text_stats", b'{"text": ""}', auth),
        ("POST", "/jobs/no_such_queue", b'{"text": "a"}', auth),
        ("POST", "/jobs/text_stats", OVERSIZED, auth),
        ("POST", "/jobs/text_stats?delay=x", b'{"text": "a"}', auth),
        ("GET", f"/jobs/{uuid.uuid4()}", None, auth),
        ("GET", "/jobs/not-a-uuid", None, auth),
    ]
    if secret:  # 401s: no token, an expired one, a malformed header
        for refused in ({}, bearer(ALICE, expires_in=-10), {"Authorization": "Basic abc"}):
            requests += [
                ("POST", "/jobs/text_stats", b'{"text": "a"}', refused),
                ("GET", "/jobs/x", None, refused),
            ]
    with fastapi_and_flask(target, pool, secret) as (api, flask):
        for method, path, data, headers in requests:
            a = api.request(method, path, content=data, headers=headers)
            f = flask.open(path, method=method, data=data, headers=headers)
            assert (f.status_code, f.get_json()) == (a.status_code, a.json()), (method, path)
            assert f.headers.get("WWW-Authenticate") == a.headers.get("www-authenticate")
        assert written(conn) == (0, 0)

        by_api = api.post("/jobs/text_stats", json={"text": "a"}, headers=auth)
        by_flask = flask.post("/jobs/text_stats", json={"text": "a"}, headers=auth)
        assert by_flask.status_code == by_api.status_code == 202
        api_body, flask_body = by_api.json(), by_flask.get_json()
        assert flask_body.keys() == api_body.keys() - {"events_url"}  # Flask has no event stream
        for body, location in (
            (api_body, by_api.headers["location"]),
            (flask_body, by_flask.headers["Location"]),
        ):
            assert location == body["status_url"] == f"/jobs/{body['job_id']}"
            # Either app shows either app's job, identically.
            assert flask.get(location, headers=auth).get_json() == api.get(location, headers=auth).json()


def test_the_example_app_serves_the_blueprint(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app() checks the schema, creates the catalog's queues, serves the blueprint and /healthz."""
    for name in ("PGMQ_WORKER_JWT_SECRET", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(db_url)
    try:
        client = app.test_client()
        assert client.get("/healthz").get_json() == {"status": "ok"}
        assert client.post("/jobs/text_stats", json={"text": "x", "top": 0}).status_code == 422
        answer = client.post("/jobs/text_stats", json={"text": "x"})  # its queue was created by create_app
        assert answer.status_code == 202
        assert client.get(answer.headers["Location"]).get_json()["status"] == "queued"
    finally:
        app.extensions[POOL_EXTENSION].close()


def test_the_example_app_takes_its_jwt_secret_from_the_environment(
    db_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SUPABASE_JWT_SECRET set: the example app's endpoints need a token and record the owner."""
    monkeypatch.delenv("PGMQ_WORKER_JWT_SECRET", raising=False)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET)
    app = create_app(db_url)
    try:
        client = app.test_client()
        assert client.post("/jobs/text_stats", json={"text": "x"}).status_code == 401
        answer = client.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(BOB))
        assert answer.status_code == 202
        stored = get_job(conn, uuid.UUID(answer.get_json()["job_id"]))
        assert stored is not None and stored.owner == BOB
    finally:
        app.extensions[POOL_EXTENSION].close()
