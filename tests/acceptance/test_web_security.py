"""What the web process refuses and hides: tokens in logs, which auth check failed, open endpoints
on a public address, 5xx for bad input or a lost database, inline types, headers, docs, header
sizes, streams past their token's expiry."""

from __future__ import annotations

import base64
import hashlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from db.connect import Target
from queues.artifacts import Artifact
from tests.acceptance.test_web_cli import env_for, one_line_error, wait_healthy
from tests.integration.test_web import ALICE, BOB, app_on, serve
from tests.support.ports import free_port
from tests.support.tokens import SECRET, bearer, token
from web.__main__ import is_loopback
from web.app import artifact_response
from web.auth import REFUSAL_MESSAGE, Auth
from web.errors import ApiError
from web.security import REDACTED, redact_query

WEB = [sys.executable, "-m", "web"]


@pytest.fixture
def authed(target: Target) -> Iterator[TestClient]:
    """The app with a JWT secret; server errors come back as 500s, as a real client would see them."""
    with TestClient(app_on(target, jwt_secret=SECRET), raise_server_exceptions=False) as c:
        yield c


def alice_job(client: TestClient) -> dict[str, Any]:
    answer = client.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE))
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


# ---------------------------------------------------------------- the access log


@pytest.mark.slow
def test_the_request_log_never_holds_an_access_token(db_url: str, tmp_path: Path) -> None:
    """`python -m web` logs every request, with ?access_token= redacted: never the token itself."""
    secret_token = token(ALICE)
    port = free_port()
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*WEB, "--port", str(port)],
            env=env_for(db_url, SUPABASE_JWT_SECRET=SECRET),
            stdout=stdout,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        job = str(uuid.uuid4())
        for path in (f"/jobs/{job}/events", f"/jobs/{job}/artifacts/a.png"):
            answer = httpx.get(f"{base}{path}", params={"access_token": secret_token, "x": "1"})
            assert answer.status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    logged = out.read_text() + err.read_text()
    assert secret_token not in logged
    assert secret_token.split(".")[2] not in logged  # not even the signature part
    requests = [line for line in logged.splitlines() if '"http.request"' in line]
    assert len([r for r in requests if "access_token=[redacted]&x=1" in r]) == 2, logged[-2000:]


any_text = st.text(
    st.characters(codec="utf-8"), max_size=40
)  # all of Unicode a URL can carry (no lone surrogates), NUL included
query_pairs = st.lists(
    st.tuples(st.sampled_from(["access_token", "x", "delay", "a b"]), any_text), max_size=6
)


@given(query_pairs)
def test_the_redacted_query_holds_every_parameter_but_the_token(pairs: list[tuple[str, str]]) -> None:
    """Whatever the query holds, read back it is the same with each access_token value redacted."""
    query = urlencode(pairs).encode("ascii")
    expected = [(k, REDACTED if k == "access_token" else v) for k, v in pairs]
    assert parse_qsl(redact_query(query), keep_blank_values=True) == expected


# ---------------------------------------------------------------- uniform 401s


@given(st.one_of(any_text, st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())))
def test_any_string_as_a_token_is_one_uniform_401(text: str) -> None:
    """An arbitrary string (all of Unicode, JWT-looking or not) is refused with the one message."""
    auth = Auth(SECRET)
    for attempt in (text, f"{text}.{text}.{text}"):
        with pytest.raises(ApiError) as refused:
            auth.caller(None, attempt)
        assert refused.value.status == 401
        assert refused.value.message == REFUSAL_MESSAGE or (
            not attempt and "required" in refused.value.message
        )


def forged_none(sub: uuid.UUID) -> str:
    """A token with `alg: none` (no signature)."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = f'{{"sub":"{sub}","aud":"authenticated","exp":{int(time.time()) + 3600}}}'
    payload = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
    return f"{header}.{payload}."


BAD_TOKENS = {
    "expired": lambda: token(ALICE, expires_in=-60),
    "audience": lambda: token(ALICE, aud="something-else"),
    "no_sub": lambda: token(None),
    "not_yet_valid": lambda: token(ALICE, nbf=time.time() + 600),
    "sub_not_uuid": lambda: token("not-a-uuid"),
    "wrong_secret": lambda: token(ALICE, secret="another-secret-of-32-characters!!!"),
    "alg_none": lambda: forged_none(ALICE),
    "hs512": lambda: jwt.encode(
        {"sub": str(ALICE), "aud": "authenticated", "exp": time.time() + 60}, SECRET * 2, "HS512"
    ),
    "garbage": lambda: "not.a.jwt",
    "huge": lambda: token(ALICE, pad="x" * 3500),
}


def test_every_refused_token_gets_the_same_answer_and_the_reason_is_logged(authed: TestClient) -> None:
    """Whichever check refuses a token, the 401 body is identical; only the log says which."""
    bodies = set()
    reasons = set()
    for name, make in BAD_TOKENS.items():
        with capture_logs() as logs:
            answer = authed.get(f"/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {make()}"})
        assert answer.status_code == 401, (name, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        bodies.add(answer.text)
        [refused] = [e for e in logs if e["event"] == "auth.refused"]
        reasons.add(refused["reason"])
    assert bodies == {f'{{"error":{{"code":"unauthorized","message":"{REFUSAL_MESSAGE}"}}}}'}
    assert len(reasons) >= 6  # expired, audience, missing claim, immature, signature, decode, ...


# ---------------------------------------------------------------- open endpoints on a public address


def test_loopback_addresses() -> None:
    """Only addresses this machine alone can reach count as loopback; a host name never does."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "fly-local-6pn"))  # noqa: S104


@pytest.mark.slow
def test_web_on_a_public_address_without_a_secret_refuses_to_serve(db_url: str) -> None:
    """`--host 0.0.0.0` and no JWT secret: one-line error, an error event in the log, exit 1."""
    result = subprocess.run(
        [*WEB, "--host", "0.0.0.0", "--port", str(free_port())],  # noqa: S104
        env=env_for(db_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, "no JWT secret", "PGMQ_WORKER_WEB_PRIVATE=true")
    assert '"event":"web.refused_open"' in result.stderr and '"level":"error"' in result.stderr


@pytest.mark.slow
def test_web_declared_private_serves_open_and_says_so_loudly(db_url: str, tmp_path: Path) -> None:
    """PGMQ_WORKER_WEB_PRIVATE=true: served on 0.0.0.0 without a secret, with a warning event."""
    port = free_port()
    err = tmp_path / "err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*WEB, "--host", "0.0.0.0", "--port", str(port)],  # noqa: S104
            env=env_for(db_url, PGMQ_WORKER_WEB_PRIVATE="true"),
            stderr=stderr,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert httpx.post(f"http://127.0.0.1:{port}/jobs/text_stats", json={"text": "x"}).status_code == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    warnings = [line for line in err.read_text().splitlines() if '"web.open_endpoints"' in line]
    assert len(warnings) == 1 and '"level":"warning"' in warnings[0], err.read_text()[-2000:]


# ---------------------------------------------------------------- no 5xx


def test_an_artifact_name_with_a_nul_is_a_404_for_the_owner(authed: TestClient) -> None:
    """`%00` (or any name no artifact can have) is the same 404 as a missing file, never a 500."""
    job = alice_job(authed)
    for name in ("a%00b.png", "%00", "x%00", "a b", "-x"):
        answer = authed.get(f"{job['status_url']}/artifacts/{name}", headers=bearer(ALICE))
        assert answer.status_code == 404, (name, answer.text)
        assert answer.json()["error"]["code"] == "unknown_artifact"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_any_artifact_name_in_the_url_is_a_404_never_a_5xx(authed: TestClient, name: str) -> None:
    """Any text as the artifact segment (percent-encoded) is the owner's plain 404, never a 500."""
    url = f"{alice_job(authed)['status_url']}/artifacts/{quote(name, safe='')}"
    answer = authed.get(url, headers=bearer(ALICE))
    assert answer.status_code == 404, (name, answer.text)


def test_requests_get_a_fast_503_with_retry_after_while_the_database_is_gone(
    server_url: str, db_url: str, target: Target
) -> None:
    """With the database unreachable, GET /jobs/{id} and POST answer 503 + Retry-After in seconds."""
    with TestClient(app_on(target), raise_server_exceptions=False) as c:
        job = c.post("/jobs/text_stats", json={"text": "x"}).json()
        name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        for method, path, body in (
            ("GET", job["status_url"], None),
            ("POST", "/jobs/text_stats", {"text": "y"}),
        ):
            started = time.monotonic()
            answer = c.request(method, path, json=body)
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, (method, answer.status_code, answer.text)
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert elapsed < 8, f"{method} {path} took {elapsed:.1f} s"


@pytest.mark.parametrize(
    ("content_type", "inline"),
    [
        ("text/plain", True),
        ("text/plain; charset=utf-8", True),
        ("audio/wav", True),
        ("image/png", True),
        ("application/json", True),
        ("text/plainx", False),
        ("audio/x-html", False),
        ("application/json+xml", False),
        ("image/pngx", False),
        ("text/html", False),
        ("image/svg+xml", False),
    ],
)
def test_only_allow_listed_types_are_served_inline(content_type: str, inline: bool) -> None:
    """The inline check is an exact match of the media type; anything else is an octet-stream download."""
    response = artifact_response(Artifact("f.bin", content_type, b"data"))
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("inline" if inline else "attachment"), disposition
    if not inline:
        assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_stored_lookalike_type_is_downloaded(authed: TestClient, conn: psycopg.Connection[Any]) -> None:
    """Through the route too: an artifact stored as audio/x-html comes back as an attachment."""
    job = alice_job(authed)
    conn.execute(
        "INSERT INTO pgmq_worker.job_artifacts (job_id, name, content_type, data) VALUES (%s, %s, %s, %s)",
        (job["job_id"], "x.html", "audio/x-html", b"<script>1</script>"),
    )
    answer = authed.get(f"{job['status_url']}/artifacts/x.html", headers=bearer(ALICE))
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["content-type"] == "application/octet-stream"


# ---------------------------------------------------------------- headers and docs


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_and_the_api_send_security_headers(authed: TestClient) -> None:
    """CSP, frame refusal and no referrer on the page, the API, errors and files alike."""
    page = authed.get("/")
    policy = page.headers["content-security-policy"]
    [script] = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    assert f"script-src {sha256_source(script)};" in policy
    assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    job = alice_job(authed)
    answers = [
        page,
        authed.get("/healthz"),
        authed.get(job["status_url"], headers=bearer(ALICE)),
        authed.get(job["status_url"]),  # 401
        authed.get("/nope"),  # 404
        authed.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE)),  # web/submit_route.py
        authed.post("/jobs/text_stats", json={"text": ""}, headers=bearer(ALICE)),  # 422 from there
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 404, 202, 422]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answers[2].headers["content-security-policy"].startswith("default-src 'none'")


def test_an_unhandled_error_is_a_500_with_the_headers_and_a_log_line(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a route (here: loading a job raises) answers Starlette's 500 through the Guard: the
    security headers are on it and the request log says 500."""

    async def broken(_self: Any, _job_id: uuid.UUID) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("web.app.Jobs.load", broken)
    with TestClient(app_on(target), raise_server_exceptions=False) as client, capture_logs() as logs:
        answer = client.get(f"/jobs/{uuid.uuid4()}")
    assert answer.status_code == 500
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    [line] = [e for e in logs if e["event"] == "http.request"]
    assert line["status"] == 500


def test_docs_are_off_by_default_and_behind_the_token_when_on(target: Target) -> None:
    """/docs and /openapi.json: 404 unless web_docs; then a token is needed, as for /queues."""
    with TestClient(app_on(target, jwt_secret=SECRET)) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404
        assert c.get("/queues").status_code == 401
        assert c.get("/queues", headers=bearer(BOB)).status_code == 200
    with TestClient(app_on(target, jwt_secret=SECRET, web_docs=True)) as c:
        for path in ("/docs", "/openapi.json"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers=bearer(BOB)).status_code == 200
        docs = c.get("/docs", headers=bearer(BOB))
        [inline] = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
        assert f"https://cdn.jsdelivr.net {sha256_source(inline)};" in docs.headers["content-security-policy"]
        assert "/jobs/{queue}" in c.get("/openapi.json", headers=bearer(BOB)).json()["paths"]


def test_oversized_headers_and_queries_are_refused_before_decoding(authed: TestClient) -> None:
    """A 10 MB Authorization header is a 431 (no JWT decoded); a huge query string a 414."""
    with capture_logs() as logs:
        answer = authed.get("/queues", headers={"Authorization": "Bearer " + "a" * 10_000_000})
    assert answer.status_code == 431 and answer.json()["error"]["code"] == "headers_too_large"
    assert not [e for e in logs if e["event"] == "auth.refused"]
    assert authed.get("/queues", headers={"X-Junk": "j" * 40_000}).status_code == 431
    assert (
        authed.get(f"/jobs/{uuid.uuid4()}/events", params={"access_token": "t" * 20_000}).status_code == 414
    )
    assert authed.get(f"/jobs/{'j' * 20_000}").status_code == 414
    assert authed.get("/queues", headers={"Authorization": "Bearer " + "a" * 5000}).status_code == 401


def test_a_real_server_refuses_a_10_mb_authorization_header(target: Target) -> None:
    """Over a real socket too (uvicorn with httptools): 431, quickly."""
    with serve(app_on(target, jwt_secret=SECRET)) as base:
        started = time.monotonic()
        answer = httpx.get(
            f"{base}/queues", headers={"Authorization": "Bearer " + "a" * 10_000_000}, timeout=30
        )
        assert answer.status_code == 431
        assert time.monotonic() - started < 10


# ---------------------------------------------------------------- SSE and token expiry


def test_a_stream_ends_when_its_token_expires(target: Target) -> None:
    """A stream on a job that does not move ends with a `reauth` event once the token expires;
    reconnecting with the same token is refused, with a fresh one the stream goes on."""
    settings = {"jwt_secret": SECRET, "sse_keepalive": timedelta(seconds=30)}
    with serve(app_on(target, **settings)) as base:
        body = httpx.post(
            f"{base}/jobs/text_stats?delay=600", json={"text": "x"}, headers=bearer(ALICE)
        ).json()
        short = token(ALICE, expires_in=1.5)
        url = f"{base}{body['events_url']}"
        lines: list[str] = []
        started = time.monotonic()
        # A read timeout well under the keepalive: a stream that outlives its token fails here.
        with httpx.stream("GET", url, params={"access_token": short}, timeout=6) as response:
            assert response.status_code == 200
            lines.extend(response.iter_lines())
        elapsed = time.monotonic() - started
        assert 1.0 < elapsed < 5, elapsed
        events = [line for line in lines if line.startswith("event: ")]
        assert events == ["event: reauth"], lines
        assert sum(1 for line in lines if line.startswith("data: {")) == 2  # the job, then the reauth
        assert httpx.get(url, params={"access_token": short}).status_code == 401
        with httpx.stream("GET", url, params={"access_token": token(ALICE)}, timeout=6) as response:
            assert response.status_code == 200
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
        assert '"status":"queued"' in first
