"""The OpenAPI document and the endpoints agree: every documented status is answered, no other is.

For each route of the document, a request that provokes each status it lists (so the document
claims nothing the route cannot say), and hypothesis-made bad requests (path segments, tokens,
query strings, bodies) whose answers must all be documented statuses with the ErrorBody body.
A route added without an entry in PROVOKE fails here until someone says how to provoke its answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from db.connect import Target
from queues import enqueue, load_catalog, pgmq
from queues.names import dlq_name
from tests.support.tokens import SECRET, bearer, token
from web import create_app
from web.settings import WebSettings

USER = uuid.UUID("00000000-0000-4000-8000-000000000001")
LONG_URL = "/x" * 9000  # over the Guard's 16 KiB
BIG_HEADERS = {"X-Filler": "f" * 40_000}  # over 32 KiB of headers
Provoke = Callable[[TestClient, dict[str, str]], Response]


@pytest.fixture
def api(target: Target) -> Iterator[TestClient]:
    app = create_app(target, settings=WebSettings(jwt_secret=SECRET), catalog=load_catalog(["handlers"]))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def jobs(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """A finished job with an artifact, and a dead one with its dead letter, both USER's."""
    for queue in ("text_stats", dlq_name("text_stats")):
        pgmq.ensure_queue(conn, queue)
    done = enqueue(conn, "text_stats", {"text": "a b"}, owner=USER)
    conn.execute(
        "UPDATE pgmq_worker.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (done.job_id,)
    )
    conn.execute(
        "INSERT INTO pgmq_worker.job_artifacts (job_id, name, content_type, data)"
        " VALUES (%s, 'a.txt', 'text/plain', 'x')",
        (done.job_id,),
    )
    dead = enqueue(conn, "text_stats", {"text": "c"}, owner=USER)
    conn.execute(
        sql.SQL("DELETE FROM pgmq.{} WHERE msg_id = %s").format(sql.Identifier("q_text_stats")),
        (dead.msg_id,),
    )
    conn.execute(
        "UPDATE pgmq_worker.jobs SET status = 'dead', finished_at = now() WHERE id = %s", (dead.job_id,)
    )
    record = {"queue": "text_stats", "msg_id": dead.msg_id, "payload": {"text": "c"}, "error": {"type": "E"}}
    pgmq.send(conn, dlq_name("text_stats"), record)
    queued = enqueue(conn, "text_stats", {"text": "d"}, owner=USER)
    running = enqueue(conn, "text_stats", {"text": "e"}, owner=USER)
    conn.execute("UPDATE pgmq_worker.jobs SET status = 'running' WHERE id = %s", (running.job_id,))
    held = "UPDATE pgmq.q_text_stats SET vt = now() + interval '1 hour', read_ct = 1 WHERE msg_id = %s"
    conn.execute(held, (running.msg_id,))  # as a worker's lease leaves it
    return {
        "done": str(done.job_id),
        "dead": str(dead.job_id),
        "queued": str(queued.job_id),
        "running": str(running.job_id),
    }


ME = bearer(USER)
SOMEONE = bearer(uuid.uuid4())

# (method, path) -> status -> how to provoke it; ids: the fixture's jobs. 414/431/503 are added
# for every route below (the Guard answers the first two before any route; 503 has its own test).
PROVOKE: dict[tuple[str, str], dict[int, Provoke]] = {
    ("post", "/jobs/{queue}"): {
        202: lambda c, ids: c.post("/jobs/text_stats", json={"text": "x"}, headers=ME),
        400: lambda c, ids: c.post("/jobs/text_stats", content=b"{", headers=ME),
        401: lambda c, ids: c.post("/jobs/text_stats", json={"text": "x"}),
        404: lambda c, ids: c.post("/jobs/no_such_queue", json={}, headers=ME),
        413: lambda c, ids: c.post("/jobs/text_stats", content=b" " * (1024 * 1024 + 1), headers=ME),
        422: lambda c, ids: c.post("/jobs/text_stats", json={"text": 5}, headers=ME),
    },
    ("get", "/jobs/{job_id}"): {
        200: lambda c, ids: c.get(f"/jobs/{ids['done']}", headers=ME),
        401: lambda c, ids: c.get(f"/jobs/{ids['done']}"),
        404: lambda c, ids: c.get(f"/jobs/{ids['done']}", headers=SOMEONE),
    },
    ("get", "/jobs/{job_id}/events"): {
        200: lambda c, ids: c.get(f"/jobs/{ids['done']}/events", headers=ME),
        401: lambda c, ids: c.get(f"/jobs/{ids['done']}/events?access_token=nope"),
        404: lambda c, ids: c.get(f"/jobs/{uuid.uuid4()}/events", headers=ME),
    },
    ("get", "/jobs/{job_id}/artifacts/{name}"): {
        200: lambda c, ids: c.get(f"/jobs/{ids['done']}/artifacts/a.txt", headers=ME),
        401: lambda c, ids: c.get(f"/jobs/{ids['done']}/artifacts/a.txt"),
        404: lambda c, ids: c.get(f"/jobs/{ids['done']}/artifacts/b.txt", headers=ME),
    },
    ("get", "/queues"): {
        200: lambda c, ids: c.get("/queues", headers=ME),
        401: lambda c, ids: c.get("/queues", headers={"Authorization": "Basic x"}),
    },
    ("post", "/jobs/{job_id}/retry"): {
        200: lambda c, ids: c.post(f"/jobs/{ids['dead']}/retry", headers=ME),
        401: lambda c, ids: c.post(f"/jobs/{ids['dead']}/retry"),
        404: lambda c, ids: c.post(f"/jobs/{ids['dead']}/retry", headers=SOMEONE),
        409: lambda c, ids: c.post(f"/jobs/{ids['done']}/retry", headers=ME),
    },
    # Issue 14's cancellation (helper cancel's route; skipped until it is in the document).
    ("post", "/jobs/{job_id}/cancel"): {
        200: lambda c, ids: c.post(f"/jobs/{ids['queued']}/cancel", headers=ME),
        202: lambda c, ids: c.post(f"/jobs/{ids['running']}/cancel", headers=ME),
        401: lambda c, ids: c.post(f"/jobs/{ids['queued']}/cancel"),
        404: lambda c, ids: c.post(f"/jobs/{ids['queued']}/cancel", headers=SOMEONE),
        409: lambda c, ids: c.post(f"/jobs/{ids['done']}/cancel", headers=ME),
    },
    ("get", "/healthz"): {200: lambda c, ids: c.get("/healthz")},
    ("get", "/"): {200: lambda c, ids: c.get("/")},
}
ANY_ROUTE = {
    414: lambda method, path: (method, path + LONG_URL, {}),
    431: lambda method, path: (method, path, BIG_HEADERS),
}
NO_DATABASE = frozenset({("get", "/queues"), ("get", "/")})  # answer without one: no 503


def operations(client: TestClient) -> dict[tuple[str, str], set[int]]:
    document = client.app.openapi()  # type: ignore[attr-defined]
    return {
        (method, path): {int(code) for code in op["responses"]}
        for path, ops in document["paths"].items()
        for method, op in ops.items()
    }


def is_error_body(response: Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_every_documented_status_is_answered(api: TestClient, jobs: dict[str, str]) -> None:
    """Each route answers each status its document lists, errors with the ErrorBody body."""
    documented = operations(api)
    unprovoked = set(documented) - set(PROVOKE)
    assert not unprovoked, f"routes without provocations: add them to PROVOKE: {sorted(unprovoked)}"
    for (method, path), statuses in documented.items():
        expected = set(PROVOKE[(method, path)]) | set(ANY_ROUTE)
        if (method, path) not in NO_DATABASE:
            expected.add(503)
        assert statuses == expected, (method, path, sorted(statuses), sorted(expected))
        for status, provoke in PROVOKE[(method, path)].items():
            answer = provoke(api, jobs)
            assert answer.status_code == status, (method, path, status, answer.text[:300])
            if status >= 400:
                assert is_error_body(answer), (method, path, answer.text[:300])
        concrete = (
            path.replace("{queue}", "text_stats").replace("{job_id}", jobs["done"]).replace("{name}", "a.txt")
        )
        for status, build in ANY_ROUTE.items():
            verb, url, headers = build(method, concrete)
            answer = api.request(verb, url, headers=headers)
            assert answer.status_code == status, (method, path, status)
            assert is_error_body(answer)


@pytest.mark.slow
@pytest.mark.timeout(120)  # each route waits out the pool's 3 s before its 503
def test_a_database_outage_is_a_documented_503(
    api: TestClient, jobs: dict[str, str], server_url: str, db_url: str
) -> None:
    """With the database refusing connections, each route that needs it answers 503 (documented)."""
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            for (method, path), provokes in PROVOKE.items():
                if (method, path) in NO_DATABASE or (method, path) not in operations(api):
                    continue
                ok = min(provokes)  # the success case, whose request reaches the database
                answer = provokes[ok](api, jobs)
                assert answer.status_code == 503, (method, path, answer.status_code, answer.text[:200])
        finally:
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )


segments = (
    st.text(max_size=60) | st.uuids().map(str) | st.sampled_from(["text_stats", "a.txt", "..", "%00", ""])
)
auth = st.sampled_from(
    [
        None,
        "",
        "Bearer",
        "Bearer x",
        "Basic abc",
        f"Bearer {token(USER)}",
        f"Bearer {token(USER, secret='w' * 40)}",
    ]
) | st.text(max_size=40)
queries = st.dictionaries(st.sampled_from(["delay", "access_token", "x"]), st.text(max_size=20), max_size=2)
bodies = st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), st.from_type(dict))


@pytest.mark.timeout(120)  # 120 requests, each a few database round trips, on a shared 2-core machine
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_requests_get_only_documented_statuses(api: TestClient, data: st.DataObject) -> None:
    """Whatever the path segments, token, query and body, the answer is documented, errors as ErrorBody."""
    documented = operations(api)
    method, path = data.draw(st.sampled_from(sorted(documented)))
    url = path
    for param in ("{queue}", "{job_id}", "{name}"):
        if param in url:
            # Dots encoded too: a client resolves a bare `..` segment before sending (to another route).
            url = url.replace(param, quote(data.draw(segments), safe="").replace(".", "%2E") or "x")
    headers = {}
    authorization = data.draw(auth)
    if authorization is not None and authorization.isascii() and authorization.isprintable():
        headers["Authorization"] = authorization
    params = data.draw(queries)
    content = data.draw(bodies) if method == "post" else None
    answer = api.request(method.upper(), url, params=params, content=content, headers=headers)
    assert answer.status_code in documented[(method, path)], (method, url, headers, params, answer.text[:300])
    if answer.status_code >= 400 and path != "/healthz":
        assert is_error_body(answer), answer.text[:300]
