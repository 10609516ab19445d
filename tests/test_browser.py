"""The dev page in a real browser: Debian's Chromium, headless, driven by Playwright.

`pgmq-worker dev` runs as a subprocess on the test's database; the browser opens the URL it prints,
submits a job and watches the bar and the step label move to the result. Without Chromium the module
is skipped, unless PGMQ_WORKER_REQUIRE_CHROMIUM=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_CHROMIUM"
DEBIAN_CHROMIUM = "/usr/bin/chromium"


def chromium_binary() -> str | None:
    """The chromium executable, on PATH or where Debian installs it."""
    found = shutil.which("chromium")
    if found:
        return found
    return DEBIAN_CHROMIUM if os.access(DEBIAN_CHROMIUM, os.X_OK) else None


CHROMIUM = chromium_binary()
if CHROMIUM is None:
    _REASON = "chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{_REASON}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEPS = {"normalise", "sentences", "words", "readability", "keywords", "summary"}
FINISHED = {"succeeded", "dead", "cancelled"}  # the page's own set: the stream ends there
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 30.0
# One round trip per poll: what the bar, the step label and the status say at the same instant.
SNAPSHOT_JS = """() => ({
    status: document.querySelector('[data-testid=status]').textContent,
    now: document.querySelector('[data-testid=progress]').getAttribute('aria-valuenow'),
    step: document.querySelector('[data-testid=step]').textContent,
})"""


@dataclass(frozen=True, slots=True)
class Dev:
    """A running `pgmq-worker dev`: the URL it printed and where its stderr goes."""

    url: str
    stderr_path: Path

    def log(self, tail: int = 3000) -> str:
        """The end of what the dev process has written to stderr (JSON log lines)."""
        return self.stderr_path.read_text(errors="replace")[-tail:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_url(proc: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path) -> str:
    """The URL from the `pgmq-worker dev: open http://...` line, once dev has printed it."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"open (http://\S+)", stdout_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            pytest.fail(
                f"pgmq-worker dev exited with status {proc.returncode} before printing its URL:\n"
                f"{stderr_path.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.1)
    pytest.fail(
        f"pgmq-worker dev printed no URL within {READY_TIMEOUT_S:.0f} s:\n"
        f"{stderr_path.read_text(errors='replace')[-3000:]}"
    )


@pytest.fixture
def dev(db_url: str, tmp_path: Path) -> Iterator[Dev]:
    """`pgmq-worker dev` on the test's database; stopped with SIGINT (Ctrl-C), which must exit 0."""
    # Only the settings this test chooses: a developer's PGMQ_WORKER_* must not change what runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMQ_WORKER_")}
    env.update(DATABASE_URL=db_url, PGMQ_WORKER_LOG_FORMAT="json", PGMQ_WORKER_POLL_INTERVAL="0.2")
    argv = [sys.executable, "-m", "worker.cli", "dev", "--port", str(_free_port())]
    stdout_path, stderr_path = tmp_path / "dev.stdout", tmp_path / "dev.stderr"
    # Files, not pipes: nothing has to drain them while the test waits on the browser.
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
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser, dev: Dev) -> Iterator[tuple[Page, list[str]]]:
    """The dev page in a fresh browser context, its queues loaded; and the console it logs."""
    console: list[str] = []
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        tab.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        tab.goto(dev.url)
        tab.wait_for_selector("[data-testid=queue] option[value=text_report]", state="attached")
        yield tab, console
    finally:
        context.close()


def words_in(text: str) -> int:
    """Words in plain English prose without digits or hyphens: tokens that hold a letter."""
    return sum(1 for token in text.split() if any(c.isalpha() for c in token))


def test_a_job_on_the_page_moves_through_its_steps_to_the_result(
    page: tuple[Page, list[str]], dev: Dev, conn: psycopg.Connection[Any]
) -> None:
    """A text_report job: the bar and step label move live, then succeeded, 100% and the word count."""
    tab, console = page
    text = "The worker reads a queue. It runs each step in turn! Does the page follow? It does, live."
    tab.select_option("[data-testid=queue]", "text_report")
    tab.fill("[data-testid=payload]", json.dumps({"text": text, "pace": 0.4}))
    tab.click("[data-testid=submit]")

    seen: list[dict[str, str | None]] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        snapshot = tab.evaluate(SNAPSHOT_JS)
        seen.append(snapshot)
        if snapshot["status"] in FINISHED:
            break
        assert time.monotonic() < deadline, (
            f"no finished status within {JOB_TIMEOUT_S:.0f} s; last {seen[-3:]}"
            f"\nconsole: {console}\n{dev.log()}"
        )
        tab.wait_for_timeout(50)

    where = f"\nconsole: {console}\nsnapshots: {seen}"
    outcome = tab.inner_text("[data-testid=outcome]")
    assert snapshot["status"] == "succeeded", f"status {snapshot['status']}, outcome {outcome}{where}"
    between = {int(s["now"]) for s in seen if s["now"] is not None and 0 < int(s["now"]) < 100}
    assert len(between) >= 2, f"aria-valuenow between 0 and 100: {sorted(between)}{where}"
    steps = {s["step"] for s in seen} & STEPS
    assert len(steps) >= 3, f"step names shown: {steps}{where}"
    assert tab.get_attribute("[data-testid=progress]", "aria-valuenow") == "100"
    assert tab.inner_text("[data-testid=pct]") == "100%"
    assert json.loads(outcome)["words"] == words_in(text) == 18, outcome
    listed = tab.eval_on_selector_all(
        "[data-testid=steps] li", "items => items.map((i) => [i.textContent, i.className])"
    )
    assert len(listed) >= 3 and all(cls == "done" for _, cls in listed), f"steps list: {listed}{where}"

    job_id = tab.inner_text("[data-testid=job-id]")
    row = conn.execute("SELECT status, result FROM pgmq_worker.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row[0] == "succeeded" and row[1] == json.loads(outcome), row
    assert not [c for c in console if c.startswith(("console.error", "pageerror"))], console


def test_an_invalid_payload_shows_the_servers_error_and_makes_no_job(
    page: tuple[Page, list[str]], conn: psycopg.Connection[Any]
) -> None:
    """An empty text breaks text_report's contract: the server's 422 message shows, and no job exists."""
    tab, console = page
    tab.select_option("[data-testid=queue]", "text_report")
    tab.fill("[data-testid=payload]", json.dumps({"text": ""}))
    with tab.expect_response(lambda r: r.request.method == "POST" and "/jobs/" in r.url) as answer:
        tab.click("[data-testid=submit]")
    response = answer.value
    assert response.status == 422, (response.status, response.text())
    message = response.json()["error"]["message"]
    assert "text" in message, message

    form_error = tab.locator("[data-testid=form-error]")
    form_error.wait_for(state="visible", timeout=5000)
    assert form_error.inner_text() == message, f"console: {console}"
    assert tab.locator("[data-testid=job]").is_hidden()
    jobs = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
    messages = conn.execute("SELECT count(*) FROM pgmq.q_text_report").fetchone()
    assert jobs == (0,) and messages == (0,), (jobs, messages)
    assert not [c for c in console if c.startswith("pageerror")], console
