"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

`pgmq-worker dev --import tests.support.dashboard_handlers` runs on the test's database; the
browser opens `<url>dashboard` from loopback. Each test saves a screenshot of the page when it
fails (its path is in the failure message); with PGMQ_WORKER_SCREENSHOTS set, the pages the docs
show are saved there too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from queues import enqueue
from tests.acceptance.test_browser import CHROMIUM, Dev, _wait_for_url, screenshot
from tests.integration.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.integration.test_webhooks import receiver
from tests.support.dashboard_handlers import FLAKY, GREET, SLOW
from tests.support.ports import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(90)]
ADMIN_TOKEN = "browser-dashboard-admin-token-42"
STOP_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 30.0
FINISHED = ("succeeded", "dead", "cancelled")
__all__ = ["receiver"]  # the fixture, used by name
# Every form control must have an accessible name (a <label for>, aria-label, or its text).
UNLABELLED_JS = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                    && !(el.tagName === 'BUTTON' && el.textContent.trim()))
    .map((el) => el.outerHTML.slice(0, 120))"""


@pytest.fixture
def dev(db_url: str, tmp_path: Path) -> Iterator[Dev]:
    """`pgmq-worker dev` with the dashboard's test handlers and an admin token; SIGINT must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGMQ_WORKER_", "SUPABASE_"))}
    env.update(
        DATABASE_URL=db_url,
        PGMQ_WORKER_LOG_FORMAT="json",
        PGMQ_WORKER_POLL_INTERVAL="0.2",
        PGMQ_WORKER_ADMIN_TOKEN=ADMIN_TOKEN,
        PGMQ_WORKER_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PGMQ_WORKER_WEBHOOK_ALLOW_PRIVATE="true",  # the test's receiver is on loopback
    )
    argv = [
        sys.executable, "-m", "worker.cli", "dev", "--port", str(free_port()),
        "--import", "tests.support.dashboard_handlers",
    ]  # fmt: skip
    stdout_path, stderr_path = tmp_path / "dev.stdout", tmp_path / "dev.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
    try:
        yield Dev(_wait_for_url(proc, stdout_path, stderr_path), stderr_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"pgmq-worker dev still ran {STOP_TIMEOUT_S:.0f} s after SIGINT; killed it")
    assert status == 0, f"pgmq-worker dev exited with {status} on SIGINT:\n{stderr_path.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for the whole module."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def tab(browser: Browser, dev: Dev, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page; its console errors fail the test; a screenshot is saved if the test failed."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    # A 401 is what the login test provokes on purpose (a wrong token); anything else is a fault.
    expected = "Failed to load resource: the server responded with a status of 401"
    page.on(
        "console", lambda m: errors.append(m.text) if m.type == "error" and expected not in m.text else None
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        yield page
        assert not errors, f"console errors: {errors}"
    finally:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(tmp_path / "last-page.png"), full_page=True)
        context.close()


@contextlib.contextmanager
def shot_on_failure(page: Page, tmp_path: Path, name: str) -> Iterator[None]:
    """Save the page as `failure-<name>.png` if the block fails, and name the file in the error."""
    try:
        yield
    except BaseException as exc:
        path = tmp_path / f"failure-{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(path), full_page=True)
        raise AssertionError(f"{exc}\n(screenshot: {path})") from exc


def wait_finished(
    conn: psycopg.Connection[Any], ids: list[Any], timeout: float = JOB_TIMEOUT_S
) -> dict[str, str]:
    """Until every job is finished; their statuses."""
    deadline = time.monotonic() + timeout
    while True:
        rows = conn.execute(
            "SELECT id::text, status FROM pgmq_worker.jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
        statuses = {r[0]: r[1] for r in rows}
        if len(statuses) == len(ids) and all(s in FINISHED for s in statuses.values()):
            return statuses
        assert time.monotonic() < deadline, f"jobs not finished: {statuses}"
        time.sleep(0.1)


def test_filter_the_jobs_and_open_one(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Jobs of two queues: filtering by queue and status lists only the matching ones; opening one shows
    its payload and result; the queues page shows both queues with their last hour."""
    greets = [enqueue(conn, GREET, {"name": f"user {n}"}).job_id for n in range(3)]
    flaky = enqueue(conn, FLAKY, {"unless": str(tmp_path / "never")}).job_id
    wait_finished(conn, [*greets, flaky])
    with shot_on_failure(tab, tmp_path, "filter"):
        tab.goto(f"{dev.url}dashboard/jobs")
        expect(tab.locator("[data-testid=loopback-banner]")).to_be_visible()
        expect(tab.locator("tr[data-job]")).to_have_count(4)
        tab.select_option("#f-queue", GREET)
        tab.select_option("#f-status", "succeeded")
        tab.click("[data-testid=apply]")
        tab.wait_for_url(lambda url: url.endswith(f"/dashboard/jobs?queue={GREET}&status=succeeded"))
        rows = tab.locator("tr[data-job]")
        expect(rows).to_have_count(3)
        assert sorted(rows.evaluate_all("rs => rs.map((r) => r.dataset.job)")) == sorted(map(str, greets))
        screenshot(tab, "dashboard-jobs")

        tab.select_option("#f-queue", "")
        tab.select_option("#f-status", "")
        tab.fill("#f-error", "not there yet")
        tab.press("#f-error", "Enter")
        expect(tab.locator("tr[data-job]")).to_have_count(1)
        tab.click("[data-testid=job-link]")
        expect(tab.locator("[data-testid=job-id]")).to_have_text(str(flaky))
        expect(tab.locator("[data-testid=job-live] [data-testid=status]")).to_have_text("dead")
        expect(tab.locator("[data-testid=error]")).to_contain_text("Permanent")
        tab.click("text=Traceback")
        expect(tab.locator("[data-testid=traceback]")).to_contain_text("Traceback (most recent call last)")
        expect(tab.locator("[data-testid=payload]")).to_contain_text("never")  # from the dead letter

        tab.goto(f"{dev.url}dashboard/jobs/{greets[0]}")
        expect(tab.locator("[data-testid=result]")).to_contain_text('"hello": "user 0"')
        screenshot(tab, "dashboard-job")

        tab.goto(f"{dev.url}dashboard")
        expect(tab.locator(f"tr[data-queue={GREET}] [data-field=finished]")).to_have_text("3")
        expect(tab.locator(f"tr[data-queue={FLAKY}] [data-field=failure_rate]")).to_have_text("100.0%")
        expect(tab.locator(f"tr[data-queue={FLAKY}] [data-field=dead_letters]")).to_have_text("1")


def test_the_queues_page_updates_live(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A job run while the queues page is open changes its numbers without a reload."""
    with shot_on_failure(tab, tmp_path, "live"):
        tab.goto(f"{dev.url}dashboard")
        expect(tab.locator("#live-state")).to_contain_text("live", timeout=10_000)
        tab.evaluate("() => { window.notReloaded = true; }")
        job = enqueue(conn, GREET, {"name": "live"}).job_id
        wait_finished(conn, [job])
        expect(tab.locator(f"tr[data-queue={GREET}] [data-field=finished]")).to_have_text("1", timeout=10_000)
        assert tab.evaluate("() => window.notReloaded") is True
        screenshot(tab, "dashboard-queues")


def test_the_workers_page_lists_the_dev_worker(tab: Page, dev: Dev, tmp_path: Path) -> None:
    """The worker `dev` runs has registered: one row, running, serving the test queues."""
    with shot_on_failure(tab, tmp_path, "workers"):
        tab.goto(f"{dev.url}dashboard/workers")
        row = tab.locator("tr[data-worker]")
        expect(row).to_have_count(1, timeout=10_000)
        expect(row.locator("[data-testid=status]")).to_have_text("running")
        expect(row).to_contain_text(GREET)
        screenshot(tab, "dashboard-workers")


def test_a_running_job_page_follows_the_job(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The page of a running job moves its progress bar live, and shows the end when it finishes."""
    job = enqueue(conn, SLOW, {"seconds": 3}).job_id
    with shot_on_failure(tab, tmp_path, "follow"):
        tab.goto(f"{dev.url}dashboard/jobs/{job}")
        bar = tab.locator("[data-testid=progress]")
        expect(tab.locator("[data-testid=job-live] [data-testid=status]")).to_have_text(
            "running", timeout=10_000
        )
        first = int(bar.get_attribute("value") or 0)
        tab.wait_for_function(
            f"() => +document.querySelector('[data-testid=progress]').getAttribute('value') > {first}"
        )
        expect(tab.locator("[data-testid=job-live] [data-testid=status]")).to_have_text(
            "succeeded", timeout=15_000
        )
        expect(tab.locator("[data-testid=result]")).to_contain_text("ticks")  # the reload showed the end


def test_the_login_form_logs_in_with_the_admin_token(tab: Page, dev: Dev, tmp_path: Path) -> None:
    """The token typed into the login form becomes a session: the header says admin (cookie); log out."""
    with shot_on_failure(tab, tmp_path, "login"):
        tab.goto(f"{dev.url}dashboard/login")
        tab.fill("#token", "not-the-token-not-the-token")
        tab.click("button[type=submit]")
        expect(tab.locator("[data-testid=login-error]")).to_be_visible()
        tab.fill("#token", ADMIN_TOKEN)
        tab.click("button[type=submit]")
        expect(tab.locator("header .who")).to_contain_text("admin (cookie)")
        expect(tab.locator("[data-testid=loopback-banner]")).to_have_count(0)
        cookies = {c["name"]: c for c in tab.context.cookies()}
        session = cookies["pgmq_worker_dashboard"]
        assert session["httpOnly"] and session["sameSite"] == "Strict", session
        assert tab.evaluate("() => document.cookie") == ""  # neither cookie is visible to script
        tab.click("text=Log out")
        expect(tab.locator("[data-testid=notice]")).to_have_text("Logged out.")


@pytest.mark.parametrize(
    "path", ["dashboard", "dashboard/jobs", "dashboard/dead-letters", "dashboard/workers"]
)
def test_every_page_has_landmarks_and_labelled_controls(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path, path: str
) -> None:
    """Banner, navigation and main landmarks; every control has an accessible name."""
    wait_finished(conn, [enqueue(conn, FLAKY, {"unless": str(tmp_path / "never")}).job_id])
    with shot_on_failure(tab, tmp_path, "a11y"):
        tab.goto(f"{dev.url}{path}")
        tree = tab.locator("body").aria_snapshot()
        for landmark in ("banner", "navigation", "main", "contentinfo"):
            assert landmark in tree, f"no {landmark} landmark in:\n{tree}"
        assert tab.evaluate(UNLABELLED_JS) == []
        assert tab.locator("h1").count() >= 1


def test_the_filters_and_buttons_work_from_the_keyboard(tab: Page, dev: Dev, tmp_path: Path) -> None:
    """Tab from the top reaches the skip link, the navigation, each filter in order and Apply;
    typing in a filter and pressing Enter on Apply submits it."""
    with shot_on_failure(tab, tmp_path, "keyboard"):
        tab.goto(f"{dev.url}dashboard/jobs")
        seen: list[str] = []
        for _ in range(60):  # a datetime-local input takes a Tab per part (month, day, year, ...)
            tab.keyboard.press("Tab")
            now = tab.evaluate("() => document.activeElement.id || document.activeElement.textContent.trim()")
            if not seen or seen[-1] != now:
                seen.append(now)
            if now == "Apply":
                break
        assert seen[0] == "Skip to content", seen
        controls = ["f-queue", "f-status", "f-owner", "f-since", "f-until", "f-error"]
        positions = [seen.index(c) for c in controls]
        assert positions == sorted(positions), seen
        assert seen.index("Apply") > positions[-1], seen
        tab.focus("#f-error")
        tab.keyboard.type("nothing like this")
        tab.keyboard.press("Tab")  # to Apply
        assert tab.evaluate("() => document.activeElement.textContent.trim()") == "Apply"
        tab.keyboard.press("Enter")
        tab.wait_for_url(lambda url: url.endswith("/dashboard/jobs?error=nothing+like+this"))
        expect(tab.locator("td.empty")).to_have_text("No jobs match.")


def test_cancel_a_running_job_and_watch_it_end_cancelled(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Cancel on a running job's page: the page follows it to `cancelled`; its message is gone."""
    job = enqueue(conn, SLOW, {"seconds": 60}).job_id
    with shot_on_failure(tab, tmp_path, "cancel"):
        tab.goto(f"{dev.url}dashboard/jobs/{job}")
        status = tab.locator("[data-testid=job-live] [data-testid=status]")
        expect(status).to_have_text("running", timeout=15_000)
        tab.click("[data-testid=cancel]")
        expect(tab.locator("[data-testid=notice]")).to_contain_text("Cancel")
        expect(tab.locator("[data-testid=job-live] [data-testid=status]")).to_have_text(
            "cancelled", timeout=20_000
        )
        expect(tab.locator("[data-testid=cancel]")).to_have_count(0)
    assert wait_finished(conn, [job]) == {str(job): "cancelled"}
    assert conn.execute(f"SELECT count(*) FROM pgmq.q_{SLOW}").fetchone() == (0,)


def test_replay_a_dead_letter_and_watch_its_job_succeed(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A job that died shows in the dead letters; once its cause is gone, Replay sends it back under
    the same job id, the letter leaves the list and the job succeeds."""
    unless = tmp_path / "fixed"
    job = enqueue(conn, FLAKY, {"unless": str(unless)}).job_id
    wait_finished(conn, [job])
    unless.write_text("ok")
    with shot_on_failure(tab, tmp_path, "replay"):
        tab.goto(f"{dev.url}dashboard/dead-letters?queue={FLAKY}")
        letters = tab.locator("tr[data-letter]")
        expect(letters).to_have_count(1)
        expect(letters.first).to_contain_text("is not there yet")
        screenshot(tab, "dashboard-dead-letters")
        tab.click("[data-testid=replay-one]")
        expect(tab.locator("[data-testid=notice]")).to_have_text("1 dead letter(s) sent back to the queue.")
        expect(tab.locator("tr[data-letter]")).to_have_count(0)
        assert wait_finished(conn, [job]) == {str(job): "succeeded"}
        tab.goto(f"{dev.url}dashboard/jobs/{job}")
        expect(tab.locator("[data-testid=job-live] [data-testid=status]")).to_have_text("succeeded")


def test_a_job_page_shows_its_webhook_deliveries(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], receiver: Any, tmp_path: Path
) -> None:
    """A job whose receiver answers one event 410 with a message: the page's webhook table shows that
    event failed with the answer, the other delivered, each with its tries; the section is screenshot."""
    receiver.answers = [410]  # not retried: that event fails at its first try
    receiver.answer_body = b"Gone: this endpoint moved to /v2/hooks \x1b[0m"
    job = enqueue(conn, GREET, {"name": "hooked"}, webhook_url=receiver.url).job_id
    wait_finished(conn, [job])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    final = "SELECT count(*) FROM pgmq_worker.webhook_deliveries WHERE job_id = %s AND result <> 'pending'"
    while conn.execute(final, (job,)).fetchone() != (2,):
        assert time.monotonic() < deadline, "the two deliveries were not recorded"
        time.sleep(0.1)
    with shot_on_failure(tab, tmp_path, "webhooks"):
        tab.goto(f"{dev.url}dashboard/jobs/{job}")
        table = tab.locator("[data-testid=webhook-deliveries]")
        expect(table.locator("tbody tr")).to_have_count(2)
        assert sorted(table.locator("[data-testid=status]").all_inner_texts()) == ["delivered", "failed"]
        expect(table.locator("[data-testid=webhook-error]")).to_have_text(
            "HTTP 410: Gone: this endpoint moved to /v2/hooks \\x1b[0m"
        )
        section = tab.locator("section[aria-labelledby=h-webhook]")
        section.scroll_into_view_if_needed()
        shot = tmp_path / "webhooks.png"
        section.screenshot(path=str(shot), animations="disabled")
        assert shot.stat().st_size > 5_000  # a rendered table, not a blank box
        screenshot(tab, "dashboard-job-webhooks")


def test_pause_a_queue_its_jobs_wait_and_resume_runs_them(
    tab: Page, dev: Dev, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Pause with a reason from the Queues page: the row says paused (and why), a job sent then
    waits queued; Resume in the row and the dev worker runs it."""
    enqueue(conn, GREET, {"name": "before"})  # the queue exists and shows on the page
    with shot_on_failure(tab, tmp_path, "pause"):
        tab.goto(f"{dev.url}dashboard")
        row = tab.locator(f"tr[data-queue={GREET}]")
        expect(row).to_have_count(1)
        tab.select_option("[data-testid=pause-queue]", GREET)
        tab.fill("[data-testid=pause-reason]", "provider maintenance")
        tab.click("[data-testid=pause-with-reason]")
        expect(tab.locator("[data-testid=notice]")).to_contain_text("Queue paused")
        expect(row.locator("[data-testid=paused]")).to_have_text("paused")
        expect(row).to_contain_text("provider maintenance")
        time.sleep(1.0)  # past the dev worker's poll interval (0.2 s): the pause holds everywhere
        job = enqueue(conn, GREET, {"name": "held"}).job_id
        time.sleep(1.5)
        held = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE id = %s", (job,)).fetchone()
        assert held == ("queued",)
        expect(row.locator("[data-field=ready]")).to_have_text("1", timeout=10_000)  # the live rows
        tab.screenshot(path=str(tmp_path / "paused.png"), full_page=True)
        screenshot(tab, "dashboard-queue-paused")
        row.locator("[data-testid=resume]").click()
        expect(tab.locator("[data-testid=notice]")).to_contain_text("Queue resumed")
        expect(row.locator("[data-testid=paused]")).to_have_count(0)
        assert wait_finished(conn, [job]) == {str(job): "succeeded"}
        tab.on("dialog", lambda dialog: dialog.accept())  # the row's Pause asks first
        row.locator("[data-testid=pause]").click()
        expect(row.locator("[data-testid=paused]")).to_have_text("paused")
        tab.screenshot(path=str(tmp_path / "paused-again.png"), full_page=True)
    print(f"screenshots: {tmp_path}")
