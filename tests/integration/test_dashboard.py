"""The dashboard without a browser: who is admitted, the login cookie, CSRF, filters and pages.

The client address is set on the ASGI scope (TestClient's `client=`), so loopback and remote
visitors are simulated on one app; jobs and dead letters are made by a real burst worker.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import conninfo, sql

from db.connect import Target
from queues import enqueue, job_list, load_catalog, pgmq
from queues.job_list import JobFilter
from tests.integration.test_webhooks import hooked_job, receiver
from tests.support.fixtures import BurstWorker
from tests.support.tokens import SECRET, token
from web import create_app
from web.dashboard.access import CSRF_COOKIE, SESSION_COOKIE
from web.settings import WebSettings
from worker import Context, Permanent, Registry, handler

ADMIN_TOKEN = "dashboard-admin-token-0123456789"
BASE = "http://dash.example:8000"
LOOPBACK = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)
PAGES = [
    "/dashboard",
    "/dashboard/jobs",
    "/dashboard/workers",
    "/dashboard/dead-letters",
    "/dashboard/schedules",
]
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
__all__ = ["receiver"]  # the fixture, used by name


class Clients:
    """One app (its lifespan held open) seen from a loopback and a remote address."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def at(self, client: tuple[str, int], **kwargs: Any) -> TestClient:
        """A client from that address (no lifespan of its own: the app is already open)."""
        return TestClient(self.app, base_url=BASE, client=client, follow_redirects=False, **kwargs)


@pytest.fixture
def clients(target: Target) -> Iterator[Clients]:
    settings = WebSettings(admin_token=ADMIN_TOKEN, jwt_secret=SECRET)
    app = create_app(target, settings=settings, catalog=load_catalog([]))
    with TestClient(app):
        yield Clients(app)


def csrf_of(client: TestClient) -> str:
    """Visit the login page (any page sets the CSRF cookie) and return the token in its form."""
    answer = client.get("/dashboard/login")
    assert answer.status_code == 200, answer.text
    found = re.search(r'name="csrf" value="([^"]+)"', answer.text)
    assert found is not None and client.cookies.get(CSRF_COOKIE) == found.group(1)
    return found.group(1)


def logged_in(clients: Clients, **kwargs: Any) -> TestClient:
    """A remote browser that logged in with the admin token."""
    browser = clients.at(REMOTE, **kwargs)
    csrf = csrf_of(browser)
    answer = browser.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN, "csrf": csrf, "next": "/dashboard/jobs"},
        headers={"Origin": BASE},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/jobs", answer.text
    return browser


# ------------------------------------------------------------------------------------- access


@pytest.mark.parametrize("path", PAGES)
def test_a_remote_visitor_without_a_credential_is_sent_to_the_login_form(clients: Clients, path: str) -> None:
    """No credential, not loopback: every page redirects to the login form, which is served."""
    remote = clients.at(REMOTE)
    answer = remote.get(path)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"].startswith("/dashboard/login?next=")
    assert "Log in" in remote.get(answer.headers["location"]).text


def test_a_remote_visitor_without_a_credential_gets_401_for_streams_and_actions(clients: Clients) -> None:
    """Streams and actions answer 401, never data; nothing is listed."""
    remote = clients.at(REMOTE)
    stream = remote.get("/dashboard/events/queues", headers={"Accept": "text/event-stream"})
    assert stream.status_code == 401
    csrf = csrf_of(remote)
    action = remote.post("/dashboard/logout", data={"csrf": csrf}, headers={"Origin": BASE})
    assert action.status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_a_loopback_visitor_is_served_with_the_banner(clients: Clients, path: str) -> None:
    """Development: loopback without a credential is served, and the page says why."""
    answer = clients.at(LOOPBACK).get(path)
    assert answer.status_code == 200, answer.text
    assert 'data-testid="loopback-banner"' in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "unsafe-inline" not in answer.headers["content-security-policy"]


def test_the_admin_token_and_a_service_role_token_are_admitted_from_anywhere(clients: Clients) -> None:
    """Bearer PGMQ_WORKER_ADMIN_TOKEN or a service_role JWT: served, no loopback banner."""
    remote = clients.at(REMOTE)
    service = token(None, role="service_role", aud=None)
    for credential in (ADMIN_TOKEN, service):
        answer = remote.get("/dashboard/jobs", headers={"Authorization": f"Bearer {credential}"})
        assert answer.status_code == 200, answer.text
        assert "loopback-banner" not in answer.text


def test_a_user_token_or_a_bad_token_is_refused_even_on_loopback(clients: Clients) -> None:
    """A user's own JWT is not the admin credential (403); a wrong one is 401."""
    local = clients.at(LOOPBACK)
    user = local.get("/dashboard", headers={"Authorization": f"Bearer {token(ALICE)}"})
    assert user.status_code == 403, user.text
    wrong = local.get("/dashboard", headers={"Authorization": "Bearer not-the-admin-token-at-all"})
    assert wrong.status_code == 401, wrong.text


def test_the_login_form_sets_an_httponly_strict_cookie_that_admits(clients: Clients) -> None:
    """POST the admin token: a session cookie (HttpOnly, SameSite=Strict, path /dashboard) admits
    later requests from a remote address; logging out forgets it."""
    browser = clients.at(REMOTE)
    csrf = csrf_of(browser)
    answer = browser.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN, "csrf": csrf, "next": "/dashboard"},
        headers={"Origin": BASE},
    )
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie and "Secure" not in cookie  # plain http here
    page = browser.get("/dashboard")
    assert page.status_code == 200 and "admin (cookie)" in page.text
    out = browser.post("/dashboard/logout", data={"csrf": csrf}, headers={"Origin": BASE})
    assert out.status_code == 303
    assert browser.get("/dashboard").status_code == 303  # back to the login form


def test_the_cookies_are_secure_behind_https(clients: Clients) -> None:
    """Behind a TLS-terminating proxy (X-Forwarded-Proto: https) both cookies are Secure."""
    browser = clients.at(REMOTE, headers={"X-Forwarded-Proto": "https"})
    page = browser.get("/dashboard/login")
    assert "Secure" in page.headers["set-cookie"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = browser.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN, "csrf": csrf.group(1)},
        headers={"Origin": BASE, "Cookie": f"{CSRF_COOKIE}={csrf.group(1)}"},
    )
    assert answer.status_code == 303, answer.text
    assert "Secure" in answer.headers["set-cookie"]


def test_a_wrong_token_at_the_login_form_is_refused(clients: Clients) -> None:
    """A wrong token: 401, the form again with a message, no session cookie."""
    browser = clients.at(REMOTE)
    csrf = csrf_of(browser)
    answer = browser.post(
        "/dashboard/login", data={"token": "guess-guess-guess-guess", "csrf": csrf}, headers={"Origin": BASE}
    )
    assert answer.status_code == 401
    assert 'data-testid="login-error"' in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_an_action_without_the_csrf_token_or_from_another_origin_is_refused(clients: Clients) -> None:
    """A logged-in browser's POST needs the form's CSRF token and a same-site Origin."""
    browser = logged_in(clients)
    csrf = browser.cookies[CSRF_COOKIE]
    missing = browser.post("/dashboard/logout", data={}, headers={"Origin": BASE})
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = browser.post("/dashboard/logout", data={"csrf": "x" * 43}, headers={"Origin": BASE})
    assert wrong.status_code == 403
    elsewhere = browser.post(
        "/dashboard/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status_code == 403 and "own pages" in elsewhere.text
    cross = browser.post("/dashboard/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert browser.get("/dashboard").status_code == 200  # none of them logged out
    login = clients.at(REMOTE).post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers={"Origin": BASE})
    assert login.status_code == 403  # the login form is CSRF-checked too


def test_the_login_form_only_redirects_inside_the_dashboard(clients: Clients) -> None:
    """`next` pointing off the dashboard (another site) is replaced by /dashboard."""
    browser = clients.at(REMOTE)
    csrf = csrf_of(browser)
    for target in ("https://evil.example/", "//evil.example", "/jobs/x", "/dashboard/login"):
        answer = browser.post(
            "/dashboard/login",
            data={"token": ADMIN_TOKEN, "csrf": csrf, "next": target},
            headers={"Origin": BASE},
        )
        assert answer.headers["location"] == "/dashboard", target


# ------------------------------------------------------------------------------------ filters

FILTER_FIELDS = ("queue", "status", "owner", "since", "until", "error", "limit", "before", "after")


# 60 pages take about 30 s on the embedded PostgreSQL 18 alone: the default 30 s timeout cut it once
# in a README run under the suite's load (a timeout, not a 500).
@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(FILTER_FIELDS), st.text(max_size=60), max_size=4))
def test_any_filter_input_gets_a_page_or_a_400_never_a_500(clients: Clients, params: dict[str, str]) -> None:
    """Whatever the query string holds, the jobs page answers 200 or 400 (with the reason), never 500."""
    answer = clients.at(LOOPBACK).get("/dashboard/jobs", params=params)
    assert answer.status_code in (200, 400), (params, answer.text[-500:])
    if answer.status_code == 400:
        assert 'data-testid="filter-error"' in answer.text


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "finished"}, "status"),
        ({"queue": "Bad-Name"}, "queue"),
        ({"owner": "alice"}, "owner"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}, "before until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"before": "123.abc"}, "cursor"),
        ({"error": "x" * 201}, "200"),
    ],
)
def test_each_bad_filter_names_itself(clients: Clients, params: dict[str, str], says: str) -> None:
    """A 400 whose message names the bad filter, the form still filled in."""
    answer = clients.at(LOOPBACK).get("/dashboard/jobs", params=params)
    assert answer.status_code == 400
    message = re.search(r'data-testid="filter-error">([^<]*)<', answer.text)
    assert message is not None and says in message.group(1), answer.text[-800:]


# -------------------------------------------------------------------------------------- pages


@pytest.fixture
def made(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> dict[str, list[uuid.UUID]]:
    """Five `greet` jobs (three Alice's) that succeed, two `doomed` ones that dead-letter."""

    @handler("greet", registry=reg)
    async def greet(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
        return {"hello": payload["name"]}

    @handler("doomed", registry=reg, max_attempts=1)
    async def doomed(payload: dict[str, Any], ctx: Context) -> None:
        raise Permanent(f"document {payload['n']} was deleted")

    ids: dict[str, list[uuid.UUID]] = {"greet": [], "doomed": [], "alice": []}
    for queue in ("greet", "doomed"):
        pgmq.ensure_queue(conn, queue)
    for n in range(5):
        owner = ALICE if n < 3 else BOB
        job = enqueue(conn, "greet", {"name": f"n{n}"}, owner=owner)
        ids["greet"].append(job.job_id)
        if owner == ALICE:
            ids["alice"].append(job.job_id)
    for n in range(2):
        ids["doomed"].append(enqueue(conn, "doomed", {"n": n}).job_id)
    burst_worker(reg)
    return ids


def listed(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.text[-800:]
    return re.findall(r'<tr data-job="([0-9a-f-]+)"', answer.text)


def test_the_jobs_page_filters_by_queue_status_owner_and_error(
    clients: Clients, made: dict[str, list[uuid.UUID]]
) -> None:
    """Each filter lists exactly its jobs, newest first."""
    local = clients.at(LOOPBACK)
    every = listed(local.get("/dashboard/jobs"))
    assert len(every) == 7
    assert set(listed(local.get("/dashboard/jobs", params={"queue": "greet"}))) == {
        str(i) for i in made["greet"]
    }
    assert set(listed(local.get("/dashboard/jobs", params={"status": "dead"}))) == {
        str(i) for i in made["doomed"]
    }
    assert set(listed(local.get("/dashboard/jobs", params={"owner": str(ALICE)}))) == {
        str(i) for i in made["alice"]
    }
    assert listed(local.get("/dashboard/jobs", params={"error": "DOCUMENT 1 was"})) == [
        str(made["doomed"][1])
    ]
    assert listed(local.get("/dashboard/jobs", params={"error": "100%_"})) == []  # wildcards are literal
    assert listed(local.get("/dashboard/jobs", params={"since": "2999-01-01T00:00"})) == []
    combined = local.get(
        "/dashboard/jobs", params={"queue": "greet", "status": "succeeded", "owner": str(BOB)}
    )
    assert set(listed(combined)) == {str(i) for i in made["greet"][3:]}


def test_keyset_pages_cover_every_job_once_in_both_directions(
    clients: Clients, made: dict[str, list[uuid.UUID]]
) -> None:
    """limit=2: following Older to the end, then Newer back, sees each job exactly once each way."""
    local = clients.at(LOOPBACK)
    everything = listed(local.get("/dashboard/jobs"))
    seen: list[str] = []
    answer = local.get("/dashboard/jobs", params={"limit": "2"})
    while True:
        seen += listed(answer)
        older = re.search(r'href="(/dashboard/jobs\?[^"]+)" rel="next"', answer.text)
        if older is None:
            break
        answer = local.get(older.group(1).replace("&amp;", "&"))
    assert seen == everything
    last_page = listed(answer)
    back: list[str] = []
    while True:
        newer = re.search(r'href="(/dashboard/jobs\?[^"]+)" rel="prev"', answer.text)
        if newer is None:
            break
        answer = local.get(newer.group(1).replace("&amp;", "&"))
        back = listed(answer) + back
    assert back + last_page == everything


def test_under_the_least_privilege_web_role_a_page_says_what_it_may_not_read(db_url: str) -> None:
    """The `web` role may not read pgmq's messages: the queues page answers 503 saying so, not 500."""
    role = f"pgmqw_dashweb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        pgmq.ensure_queue(admin, "greet")
        admin.execute("SELECT pgmq_worker.grant_access(%s, 'web')", (role,))
        try:
            params = conninfo.conninfo_to_dict(db_url)
            params["user"] = role
            web = Target(
                conninfo.make_conninfo(**{k: v for k, v in params.items() if v}), transaction_pooler=False
            )
            app = create_app(web, settings=WebSettings(admin_token=ADMIN_TOKEN), catalog=load_catalog([]))
            with TestClient(app, client=LOOPBACK, base_url=BASE) as local:
                answer = local.get("/dashboard")
                assert answer.status_code == 503, answer.text[-500:]
                assert "least-privilege" in answer.text and "q_greet" in answer.text
                assert local.get("/dashboard/jobs").status_code == 200  # the job rows it may read
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_error_text_beyond_the_first_errored_rows_is_found_through_the_index(
    conn: psycopg.Connection[Any], made: dict[str, list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a first try of one errored row, a word only in an older error is still found (the
    trigram path), and one in the newest is found by the first try; the same rows either way."""
    monkeypatch.setattr(job_list, "ERRORED_BUDGET", 1)
    older, newer = made["doomed"]
    assert [r.id for r in job_list.list_jobs(conn, JobFilter(error="document 0"), 10).rows] == [older]
    assert [r.id for r in job_list.list_jobs(conn, JobFilter(error="document 1"), 10).rows] == [newer]
    assert {r.id for r in job_list.list_jobs(conn, JobFilter(error="was deleted"), 10).rows} == {older, newer}
    assert job_list.list_jobs(conn, JobFilter(error="nowhere at all"), 10).rows == []


def local_browser(clients: Clients) -> tuple[TestClient, str]:
    """A loopback browser with its CSRF token."""
    browser = clients.at(LOOPBACK)
    return browser, csrf_of(browser)


def test_cancel_answers_404_and_409_as_pages_and_cancels_a_queued_job(
    clients: Clients, made: dict[str, list[uuid.UUID]], conn: psycopg.Connection[Any]
) -> None:
    """Cancel an unknown or a finished job: the page says why (404, 409); a queued one ends cancelled."""
    browser, csrf = local_browser(clients)
    form = {"csrf": csrf}
    assert browser.post(f"/dashboard/jobs/{uuid.uuid4()}/cancel", data=form).status_code == 404
    assert browser.post("/dashboard/jobs/not-a-uuid/cancel", data=form).status_code == 404
    done = browser.post(f"/dashboard/jobs/{made['greet'][0]}/cancel", data=form)
    assert done.status_code == 409 and "succeeded" in done.text
    waiting = enqueue(conn, "greet", {"name": "later"}, delay=3600).job_id
    answer = browser.post(f"/dashboard/jobs/{waiting}/cancel", data=form)
    assert (
        answer.status_code == 303
        and answer.headers["location"] == f"/dashboard/jobs/{waiting}?done=cancelled"
    )
    row = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE id = %s", (waiting,)).fetchone()
    assert row == ("cancelled",)
    assert "Job cancelled." in browser.get(answer.headers["location"]).text
    assert browser.post(f"/dashboard/jobs/{waiting}/cancel", data={}).status_code == 403  # no CSRF token


def test_the_schedules_page_lists_each_schedule_with_its_last_tick(
    clients: Clients, made: dict[str, list[uuid.UUID]], conn: psycopg.Connection[Any]
) -> None:
    """A declared schedule shows its cron, zone and newest tick, linked to that tick's job and status."""
    job = made["greet"][0]
    conn.execute(
        "INSERT INTO pgmq_worker.schedules (name, queue, cron, timezone, catch_up)"
        " VALUES ('nightly', 'greet', '0 3 * * *', 'Europe/Berlin', 'latest')"
    )
    conn.execute(
        "INSERT INTO pgmq_worker.schedule_ticks (schedule, tick, queue, msg_id, job_id)"
        " VALUES ('nightly', now() - interval '2 hours', 'greet', 1, %s)",
        (job,),
    )
    page = clients.at(LOOPBACK).get("/dashboard/schedules")
    assert page.status_code == 200, page.text[-500:]
    row = re.search(r'<tr data-schedule="nightly">(.*?)</tr>', page.text, flags=re.S)
    assert row is not None
    assert "0 3 * * *" in row.group(1) and "Europe/Berlin" in row.group(1)
    assert f'/dashboard/jobs/{job}"' in row.group(1) and "succeeded" in row.group(1)


def test_cancel_and_retry_answer_404_and_409_as_pages(
    clients: Clients, made: dict[str, list[uuid.UUID]]
) -> None:
    """Cancel an unknown or finished job, retry one that is not dead: the page says why (404/409)."""
    browser, csrf = local_browser(clients)
    form = {"csrf": csrf}
    assert browser.post(f"/dashboard/jobs/{uuid.uuid4()}/cancel", data=form).status_code == 404
    assert browser.post("/dashboard/jobs/not-a-uuid/cancel", data=form).status_code == 404
    done = browser.post(f"/dashboard/jobs/{made['greet'][0]}/cancel", data=form)
    assert done.status_code == 409 and "succeeded" in done.text
    assert browser.post(f"/dashboard/jobs/{made['greet'][0]}/retry", data=form).status_code == 409
    assert browser.post(f"/dashboard/jobs/{uuid.uuid4()}/retry", data=form).status_code == 404


@pytest.mark.parametrize(
    ("queue", "fields", "status"),
    [
        ("doomed", {"scope": "everything"}, 400),
        ("doomed", {"scope": "one", "msg_id": "abc"}, 400),
        ("doomed", {"scope": "one", "msg_id": "9" * 30}, 400),
        ("Bad-Name", {"scope": "all"}, 404),
        ("nothing_here", {"scope": "all"}, 404),
    ],
)
def test_bad_replays_are_4xx(
    clients: Clients, made: dict[str, list[uuid.UUID]], queue: str, fields: dict[str, str], status: int
) -> None:
    """A replay the page cannot do answers its 4xx and sends nothing back."""
    browser, csrf = local_browser(clients)
    answer = browser.post(f"/dashboard/dead-letters/{queue}/replay", data={"csrf": csrf, **fields})
    assert answer.status_code == status, answer.text[-400:]


def test_replay_by_error_type_and_purge_from_the_page(
    clients: Clients, made: dict[str, list[uuid.UUID]], conn: psycopg.Connection[Any]
) -> None:
    """Replay the `Permanent` letters: both go back under their job ids; purge then finds none."""
    browser, csrf = local_browser(clients)
    wrong = browser.post("/dashboard/dead-letters/doomed/purge", data={"csrf": csrf, "older_than": "soon"})
    assert wrong.status_code == 400
    answer = browser.post(
        "/dashboard/dead-letters/doomed/replay",
        data={"csrf": csrf, "scope": "error_type", "error_type": "Permanent"},
    )
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=replayed&n=2"), answer.text
    statuses = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE queue = 'doomed'").fetchall()
    assert statuses == [("queued",), ("queued",)]
    purged = browser.post("/dashboard/dead-letters/doomed/purge", data={"csrf": csrf})
    assert purged.status_code == 303 and purged.headers["location"].endswith("done=purged&n=0")


def test_the_job_page_lists_its_webhook_deliveries_escaped(
    clients: Clients, target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """A receiver that answers 500 with markup: each event's row shows failed, its tries and the
    answer's start as text (escaped, never markup)."""
    receiver.answers = [500] * 4
    receiver.answer_body = b"<script>alert(1)</script> down for maintenance"
    sent = hooked_job(target, conn, receiver.url, webhook_max_tries=2)
    page = clients.at(LOOPBACK).get(f"/dashboard/jobs/{sent.job_id}")
    assert page.status_code == 200, page.text[-800:]
    table = page.text.split('data-testid="webhook-deliveries"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3  # the head and two events
    assert "job.running" in table and "job.succeeded" in table
    assert table.count('data-testid="status">failed<') == 2
    assert "HTTP 500: &lt;script&gt;alert(1)&lt;/script&gt; down for maintenance" in table
    assert "<script>" not in table
    assert 'data-testid="webhook-deliveries-shown"' not in page.text  # all of them are shown


def test_the_job_page_shows_the_newest_webhook_deliveries_of_many(
    clients: Clients, conn: psycopg.Connection[Any]
) -> None:
    """A job with 60 recorded events: the newest 50, and a line saying how many there are."""
    pgmq.ensure_queue(conn, "many_hooks")
    job_id = enqueue(conn, "many_hooks", {}, webhook_url="https://example.com/hook").job_id
    conn.execute(
        "INSERT INTO pgmq_worker.webhook_deliveries (webhook_id, job_id, event, result, tries, status_code,"
        " first_tried_at, last_tried_at) SELECT 'msg_' || g, %s, 'job.running', 'delivered', 1, 200,"
        " now() - make_interval(secs => g), now() - make_interval(secs => g)"
        " FROM generate_series(1, 60) AS g",
        (job_id,),
    )
    page = clients.at(LOOPBACK).get(f"/dashboard/jobs/{job_id}")
    assert page.status_code == 200, page.text[-800:]
    assert "The newest 50 of 60 events." in page.text
    shown = re.findall(r'title="webhook-id">(msg_\d+)<', page.text)
    assert shown == [f"msg_{g}" for g in range(1, 51)]  # newest first
