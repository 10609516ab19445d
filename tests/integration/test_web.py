"""The web process: enqueue, job status, SSE streams, auth, health; ASGI client and real servers."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from db.connect import Target
from handlers.images import IMAGE_BATCH
from handlers.report import TEXT_REPORT
from queues import enqueue_batch, load_catalog, pgmq
from queues.enqueue import MAX_PAYLOAD_BYTES
from queues.jobs import JOB_CHANNEL, get_job
from tests.support.helpers import make_worker, rows
from tests.support.tokens import SECRET, bearer, token
from web import create_app
from web.settings import WebSettings
from worker.registry import Registry

ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)

registry = Registry.from_modules(["handlers"])  # the reference handlers, as `pgmq-worker run` loads them


def web_settings(**overrides: Any) -> WebSettings:
    values: dict[str, Any] = {
        "sse_keepalive": timedelta(seconds=2),
        "sse_poll_interval": timedelta(seconds=0.2),
    }
    values.update(overrides)
    return WebSettings(**values)


def app_on(target: Target, **settings: Any) -> FastAPI:
    return create_app(target, settings=web_settings(**settings), catalog=load_catalog(["handlers"]))


@pytest.fixture
def client(target: Target) -> Iterator[TestClient]:
    with TestClient(app_on(target)) as c:
        yield c


@pytest.fixture
def authed(target: Target) -> Iterator[TestClient]:
    with TestClient(app_on(target, jwt_secret=SECRET)) as c:
        yield c


def job_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
    assert row is not None
    return int(row[0])


def nothing_written(conn: psycopg.Connection[Any]) -> bool:
    return job_count(conn) == 0 and rows(conn, "text_stats") == [] and rows(conn, "text_report") == []


# ---------------------------------------------------------------- enqueue and status (ASGI client)


def test_post_enqueues_and_get_shows_the_job(client: TestClient, conn: psycopg.Connection[Any]) -> None:
    """POST answers 202 with the job id and a Location; the message and its queued job row exist."""
    answer = client.post("/jobs/text_stats", json={"text": "one two two"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/jobs/{body['job_id']}" == body["status_url"]
    assert body["events_url"] == f"/jobs/{body['job_id']}/events"
    assert body["queue"] == "text_stats" and body["created"] is True
    [message] = rows(conn, "text_stats")
    assert message["msg_id"] == body["msg_id"] and message["message"] == {"text": "one two two", "top": 5}
    shown = client.get(body["status_url"])
    assert shown.status_code == 200
    stored = get_job(conn, uuid.UUID(body["job_id"]))
    assert stored is not None
    assert shown.json() == stored.as_json()
    assert shown.json()["status"] == "queued" and shown.json()["progress"] == 0


@pytest.mark.parametrize(
    ("path", "content", "status", "code"),
    [
        ("/jobs/text_stats", b"{not json", 400, "invalid_json"),
        ("/jobs/text_stats", b"", 400, "invalid_json"),
        ("/jobs/text_stats", b"\xff\xfe", 400, "invalid_json"),
        ("/jobs/text_stats", b"[1, 2]", 422, "invalid_payload"),
        ("/jobs/text_stats", b'{"text": ""}', 422, "invalid_payload"),
        ("/jobs/text_stats", b'{"text": "x", "surprise": 1}', 422, "invalid_payload"),
        ("/jobs/text_stats?delay=soon", b'{"text": "x"}', 400, "bad_request"),
        ("/jobs/text_stats?delay=-1", b'{"text": "x"}', 400, "bad_request"),
        ("/jobs/no_such_queue", b"{}", 404, "unknown_queue"),
        ("/jobs/Bad-Name", b"{}", 404, "unknown_queue"),
        ("/jobs/text_stats", b'{"text": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', 413, "payload_too_large"),
    ],
)
def test_bad_posts_get_a_json_error_and_write_nothing(
    client: TestClient, conn: psycopg.Connection[Any], path: str, content: bytes, status: int, code: str
) -> None:
    """Each bad request gets its 4xx and a JSON error body naming the problem; nothing is enqueued."""
    answer = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    assert nothing_written(conn)


# Fixed ids: a random one differs between pytest-xdist workers, which then refuse to run.
@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1"], ids=["unknown", "not-a-uuid", "1"])
def test_unknown_jobs_are_404(client: TestClient, job_id: str) -> None:
    """An id that is no job (or no UUID) is a 404 with a JSON error, on GET and on the stream."""
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "unknown_job"


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    """Even the framework's own 404/405 use the JSON error shape."""
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    answer = client.delete("/jobs/text_stats")
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("query", "content", "status"),
    [
        ("", b'{"text": "x"}', 202),
        ("?delay=5&delay=soon", b'{"text": "x"}', 400),  # the last ?delay= counts, on both ways
        ("", b"{not json", 400),
        ("", b'{"text": ""}', 422),
    ],
)
def test_the_declared_route_answers_as_the_middleware_does(
    target: Target, query: str, content: bytes, status: int
) -> None:
    """SubmitRoute answers POST /jobs/{queue} ahead of FastAPI; mounted under a prefix (root_path)
    FastAPI's declared route answers instead, through the same `answer`: same status and body
    shape, same headers."""
    answers = []
    for root in ("", "/api"):
        with TestClient(app_on(target), root_path=root) as c:
            answer = c.post(
                f"{root}/jobs/text_stats{query}",
                content=content,
                headers={"Content-Type": "application/json"},
            )
        answers.append(answer)
    fast, declared = answers
    assert fast.status_code == declared.status_code == status
    assert set(fast.headers) == set(declared.headers)
    assert fast.json().keys() == declared.json().keys()
    if status >= 400:
        assert fast.json() == declared.json()


def test_post_to_a_longer_path_is_not_the_enqueue_route(client: TestClient) -> None:
    """/jobs/{queue}/more is not a queue name: the router's JSON 405/404, nothing enqueued."""
    answer = client.post("/jobs/text_stats/more", json={"text": "x"})
    assert answer.status_code in (404, 405) and answer.json()["error"]["code"] in (
        "not_found",
        "method_not_allowed",
    )
    assert client.post("/jobs/", json={"text": "x"}).status_code in (404, 405)


def test_idempotency_key_returns_the_first_job(client: TestClient, conn: psycopg.Connection[Any]) -> None:
    """The same Idempotency-Key while the job is active returns it again; one message is sent."""
    headers = {"Idempotency-Key": "upload-42"}
    first = client.post("/jobs/text_stats", json={"text": "a"}, headers=headers).json()
    second = client.post("/jobs/text_stats", json={"text": "a"}, headers=headers).json()
    assert second["job_id"] == first["job_id"] and second["created"] is False
    assert len(rows(conn, "text_stats")) == 1
    other = client.post(
        "/jobs/text_stats", json={"text": "a"}, headers={"Idempotency-Key": "upload-43"}
    ).json()
    assert other["job_id"] != first["job_id"]
    too_long = client.post("/jobs/text_stats", json={"text": "a"}, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 400


def test_delay_hides_the_message(client: TestClient, conn: psycopg.Connection[Any]) -> None:
    """`?delay=` seconds keeps the message invisible that long."""
    assert client.post("/jobs/text_stats?delay=30", json={"text": "later"}).status_code == 202
    [message] = rows(conn, "text_stats")
    assert message["visible"] is False


def test_queues_lists_the_catalog_with_valid_examples(client: TestClient) -> None:
    """GET /queues describes the declared queues; each example passes its own contract."""
    listed = {q["queue"]: q for q in client.get("/queues").json()}
    assert {"text_stats", "text_report", "image_batch", "image_generate"} <= set(listed)
    report = listed["text_report"]
    assert report["summary"].startswith("A reading report")
    assert report["schema"]["properties"]["text"]["type"] == "string"
    TEXT_REPORT.parse(report["example"])
    assert listed["image_batch"]["steps"] == ["plan", "generate", "collect"]  # the page lists them
    assert listed["text_stats"]["steps"] == []
    IMAGE_BATCH.parse(listed["image_batch"]["example"])


def test_healthz_and_page(client: TestClient) -> None:
    """/healthz reports the database and the listener; / serves the page without a build step."""
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-testid="progress"' in page.text and "EventSource" in page.text


def test_healthz_is_503_when_the_database_is_gone(server_url: str, db_url: str, target: Target) -> None:
    """Once the database cannot be reached, /healthz answers 503 with the reason."""
    with TestClient(app_on(target)) as c:
        assert c.get("/healthz").status_code == 200
        name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        answer = c.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable"


# ---------------------------------------------------------------- auth


def test_without_a_secret_the_endpoints_are_open_and_jobs_have_no_owner(
    client: TestClient, conn: psycopg.Connection[Any]
) -> None:
    """No JWT secret: no token needed, and a token sent anyway is not used for ownership."""
    body = client.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE)).json()
    assert client.get(body["status_url"]).json()["owner"] is None


def test_post_requires_a_valid_token_and_records_its_subject(
    authed: TestClient, conn: psycopg.Connection[Any]
) -> None:
    """With a secret: no token, a bad scheme, a bad signature, an expired token or no subject is 401."""
    bad = [
        {},
        {"Authorization": f"Basic {token(ALICE)}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {token(ALICE, secret='another-secret-of-32-characters!!!')}"},
        {"Authorization": f"Bearer {token(ALICE, expires_in=-60)}"},
        {"Authorization": f"Bearer {token(None)}"},  # the anon key: a JWT with no user
        {"Authorization": f"Bearer {token(ALICE, aud='something-else')}"},
        {"Authorization": f"Bearer {token('not-a-uuid')}"},
    ]
    for headers in bad:
        answer = authed.post("/jobs/text_stats", json={"text": "x"}, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"]["code"] == "unauthorized"
    assert nothing_written(conn)
    answer = authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE))
    assert answer.status_code == 202
    stored = get_job(conn, uuid.UUID(answer.json()["job_id"]))
    assert stored is not None and stored.owner == ALICE


def test_only_the_owner_sees_a_job(authed: TestClient) -> None:
    """Another user's job is a 404 (as if it did not exist); no token is 401; the owner sees it."""
    body = authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE)).json()
    for path in (body["status_url"], body["events_url"]):
        assert authed.get(path).status_code == 401
        assert authed.get(path, headers=bearer(BOB)).status_code == 404
    # The stream (EventSource sends no headers) also takes the token as ?access_token=; GET does not.
    assert authed.get(body["events_url"], params={"access_token": token(BOB)}).status_code == 404
    assert authed.get(body["status_url"], params={"access_token": token(ALICE)}).status_code == 401
    assert authed.get(body["status_url"], headers=bearer(ALICE)).json()["owner"] == str(ALICE)


def test_idempotency_keys_are_per_user(authed: TestClient, conn: psycopg.Connection[Any]) -> None:
    """Bob reusing Alice's key gets his own job, never hers."""
    key = {"Idempotency-Key": "same"}
    alice = authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE) | key).json()
    bob = authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(BOB) | key).json()
    again = authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE) | key).json()
    assert alice["job_id"] != bob["job_id"] and again["job_id"] == alice["job_id"]
    assert job_count(conn) == 2


def test_a_short_secret_is_refused() -> None:
    """A JWT secret under 16 characters is a configuration error, not a weak default."""
    with pytest.raises(ValueError, match="jwt_secret"):
        WebSettings(jwt_secret="short")


# ---------------------------------------------------------------- SSE with real servers


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app on a real uvicorn server on a free port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def read_events(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 30
) -> list[dict[str, Any]]:
    """Read an SSE stream until the server ends it; the data of each event, in order."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def stream_while_working(url: str, target: Target, **worker_settings: Any) -> list[dict[str, Any]]:
    """Follow `url` in a thread while a worker drains the queues; the events the stream sent."""
    found: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: found.extend(read_events(url)))
    reader.start()
    time.sleep(0.3)  # the stream is open and has sent the queued state
    worker = make_worker(target, registry, burst=True, **worker_settings)
    asyncio.run(asyncio.wait_for(worker.run(), 60))
    reader.join(30)
    assert not reader.is_alive(), "the stream did not end after the job finished"
    return found


def assert_moves_to_success(events: list[dict[str, Any]]) -> None:
    statuses = [e["status"] for e in events]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded", statuses
    assert "running" in statuses
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < p < 100 for p in progress), progress
    assert len({e["step"] for e in events if e["step"]}) >= 2
    assert events[-1]["result"]["words"] > 0
    assert all(a != b for a, b in itertools.pairwise(events)), "an unchanged state was sent twice"


def test_concurrent_posts_share_statements_and_each_gets_its_own_job(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """60 requests at once from two users on a real server: every one is 202 with its own job
    (its owner's, its delay, its text), in fewer statements than requests (web/coalesce.py)."""
    app = app_on(target, jwt_secret=SECRET)

    async def post_all(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        f"/jobs/text_stats?delay={i % 3}",
                        json={"text": f"request {i}"},
                        headers=bearer(ALICE if i % 2 else BOB),
                    )
                    for i in range(60)
                )
            )

    with serve(app) as base:
        answers = asyncio.run(post_all(base))
    assert [a.status_code for a in answers] == [202] * 60, [a.text for a in answers if a.status_code != 202]
    coalescer = app.state.jobs.coalescer
    assert coalescer.sent_requests == 60
    assert coalescer.sent_statements < 60
    for i, a in enumerate(answers):
        job_id = uuid.UUID(a.json()["job_id"])
        stored = get_job(conn, job_id)
        assert stored is not None and stored.owner == (ALICE if i % 2 else BOB)
        [(message, hidden)] = conn.execute(
            "SELECT message, vt - enqueued_at FROM pgmq.q_text_stats WHERE msg_id = %s", (a.json()["msg_id"],)
        ).fetchall()
        assert message["text"] == f"request {i}"
        assert timedelta(seconds=i % 3) <= hidden < timedelta(seconds=i % 3 + 5)


def test_sse_streams_every_step_until_the_job_ends_on_another_instance(target: Target) -> None:
    """Enqueue through instance A, follow on instance B: B's LISTEN sees the worker's changes."""
    with serve(app_on(target)) as a, serve(app_on(target)) as b:
        body = httpx.post(
            f"{a}/jobs/text_report", json={"text": "Alpha beta. Gamma delta.", "pace": 0.6}
        ).json()
        assert httpx.get(f"{b}/healthz").json()["listening"] is True
        events = stream_while_working(f"{b}{body['events_url']}", target)
        assert_moves_to_success(events)
        assert events[-1] == httpx.get(f"{a}{body['status_url']}").json()
        assert httpx.get(f"{b}/healthz").json()["streams"] == 0


def test_sse_without_listen_polls_the_row(db_url: str) -> None:
    """Behind a transaction pooler (no LISTEN) the stream re-reads the row and still sees each step."""
    pooled = Target(db_url, transaction_pooler=True)
    with serve(app_on(pooled)) as base:
        assert httpx.get(f"{base}/healthz").json()["listening"] is False
        body = httpx.post(
            f"{base}/jobs/text_report", json={"text": "One two. Three four.", "pace": 0.6}
        ).json()
        events = stream_while_working(f"{base}{body['events_url']}", Target(db_url, transaction_pooler=False))
        assert_moves_to_success(events)


def test_sse_of_a_finished_job_sends_it_once_and_ends(target: Target) -> None:
    """A stream opened after the job ended sends the final state and closes (no endless stream)."""
    with serve(app_on(target, jwt_secret=SECRET)) as base:
        answer = httpx.post(f"{base}/jobs/text_stats", json={"text": "done"}, headers=bearer(ALICE))
        body = answer.json()
        asyncio.run(asyncio.wait_for(make_worker(target, registry, burst=True).run(), 60))
        # The browser's EventSource cannot set headers: the token may come as ?access_token=.
        events = read_events(f"{base}{body['events_url']}?access_token={token(ALICE)}", timeout=10)
        assert [e["status"] for e in events] == ["succeeded"]


def test_sse_keeps_idle_streams_alive_with_comments(target: Target) -> None:
    """A job that does not move still gets keepalive comments, so proxies keep the stream open."""
    with serve(app_on(target, sse_keepalive=timedelta(seconds=0.3))) as base:
        body = httpx.post(f"{base}/jobs/text_stats", json={"text": "idle"}).json()
        lines: list[str] = []
        with httpx.stream("GET", f"{base}{body['events_url']}", timeout=10) as response:
            for line in response.iter_lines():
                lines.append(line)
                if sum(1 for x in lines if x.startswith(":")) >= 2:
                    break
        assert sum(1 for x in lines if x.startswith("data: ")) == 1
        assert ": keepalive" in lines


# ---------------------------------------------------------------- the notification trigger


def test_watched_job_changes_notify_their_ids_in_chunks_under_the_payload_limit(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """One statement changing 450 watched rows notifies each id once, in payloads under 8000 bytes;
    changes to jobs nobody watches send nothing."""
    pgmq.ensure_queue(conn, "text_stats")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {JOB_CHANNEL}")
        unwatched = enqueue_batch(conn, "text_stats", [{"text": f"u{i}"} for i in range(10)])
        assert list(listener.notifies(timeout=0.5)) == []
        sent = enqueue_batch(conn, "text_stats", [{"text": f"t{i}"} for i in range(450)])
        watched = [str(s.job_id) for s in sent]
        conn.execute(
            "INSERT INTO pgmq_worker.job_watchers (job_id, listener, expires_at)"
            " SELECT unnest(%s::uuid[]), 'test', now() + interval '1 minute'",
            (watched,),
        )
        everything = [str(s.job_id) for s in unwatched] + watched
        conn.execute("UPDATE pgmq_worker.jobs SET progress = 1 WHERE id = ANY(%s::uuid[])", (everything,))
        notes = list(listener.notifies(timeout=2.0))
    assert all(len(n.payload.encode()) < 8000 for n in notes)
    assert 2 <= len(notes) <= 4
    assert sorted(i for n in notes for i in n.payload.split(",")) == sorted(watched)


def test_an_upsert_of_a_watched_job_notifies_and_new_rows_do_not(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The worker's read upserts the job row (INSERT ... ON CONFLICT DO UPDATE): a watched job
    taken that way notifies through the update trigger; inserting new rows notifies nothing
    (migration 0014 dropped the insert trigger: a new row's id cannot be watched yet)."""
    pgmq.ensure_queue(conn, "text_stats")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {JOB_CHANNEL}")
        [sent] = enqueue_batch(conn, "text_stats", [{"text": "watched"}])
        assert list(listener.notifies(timeout=0.3)) == []
        conn.execute(
            "INSERT INTO pgmq_worker.job_watchers (job_id, listener, expires_at)"
            " VALUES (%s, 'test', now() + interval '1 minute')",
            (sent.job_id,),
        )
        conn.execute(
            "INSERT INTO pgmq_worker.jobs AS j (queue, msg_id, status) VALUES ('text_stats', %s, 'running')"
            " ON CONFLICT (queue, msg_id) DO UPDATE SET status = 'running'",
            (sent.msg_id,),
        )
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
    assert [n.payload for n in notes] == [str(sent.job_id)]
    triggers = conn.execute(
        "SELECT tgname FROM pg_trigger"
        " WHERE tgrelid = 'pgmq_worker.jobs'::regclass AND tgname LIKE 'jobs_notify%'"
    ).fetchall()
    assert triggers == [("jobs_notify_update",)]


def test_streams_register_and_drop_their_watches(target: Target, conn: psycopg.Connection[Any]) -> None:
    """An open stream has its job in job_watchers; once it ends the row is gone again."""
    with serve(app_on(target)) as base:
        body = httpx.post(f"{base}/jobs/text_stats", json={"text": "watch me"}).json()
        seen: list[int] = []
        with httpx.stream("GET", f"{base}{body['events_url']}", timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append(job_watchers(conn, body["job_id"]))
                    break
        deadline = time.monotonic() + 5
        while job_watchers(conn, body["job_id"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [1]
        assert job_watchers(conn, body["job_id"]) == 0


def job_watchers(conn: psycopg.Connection[Any], job_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgmq_worker.job_watchers WHERE job_id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])
