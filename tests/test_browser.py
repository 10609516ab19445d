"""The dev page in a real browser: headless Chromium (Debian's), driven by Playwright.

`pgmq-worker dev` runs as a subprocess on the test's database; the browser opens the page it
prints, submits a job and watches the progress bar and step label move to the result. Without
Chromium the tests are skipped, unless PGMQ_WORKER_REQUIRE_CHROMIUM=1 (CI), which fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from handlers.text import WORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_CHROMIUM"
STEPS = {"normalise", "sentences", "words", "readability", "keywords", "summary"}


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dev_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """`pgmq-worker dev` on the test database; its printed URL; stopped with SIGINT (Ctrl-C) after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMQ_WORKER_")}
    env.update({"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_FORMAT": "json", "PGMQ_WORKER_POLL_INTERVAL": "0.2"})
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        command = [sys.executable, "-m", "worker.cli", "dev", "--port", str(port)]
        proc = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while (match := re.search(r"open (http://\S+)", out.read_text())) is None:
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "dev did not print its URL"
            time.sleep(0.1)
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(30)
    assert status == 0, err.read_text()[-2000:]


def open_page(browser: Browser, url: str, console: list[str]) -> Page:
    page = browser.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(url)
    page.wait_for_selector("[data-testid=queue] option[value=text_report]", state="attached")
    return page


def test_a_job_submitted_on_the_page_moves_to_its_result(browser: Browser, dev_url: str) -> None:
    """The bar and the step label move through the steps live, to 100% and the result."""
    console: list[str] = []
    page = open_page(browser, dev_url, console)
    text = "The worker reads a queue. It runs each step! Does the page follow? It does."
    page.select_option("[data-testid=queue]", "text_report")
    page.fill("[data-testid=payload]", f'{{"text": "{text}", "pace": 0.4}}')
    page.click("[data-testid=submit]")

    values: set[int] = set()
    steps: set[str] = set()
    deadline = time.monotonic() + 30
    while page.inner_text("[data-testid=status]") != "succeeded":
        assert time.monotonic() < deadline, f"no success; console: {console}"
        now = page.get_attribute("[data-testid=progress]", "aria-valuenow")
        values.add(int(now or 0))
        steps.add(page.inner_text("[data-testid=step]"))
        page.wait_for_timeout(50)
    assert len({v for v in values if 0 < v < 100}) >= 2, (values, console)
    assert len(steps & STEPS) >= 3, steps
    assert page.inner_text("[data-testid=pct]") == "100%"
    outcome = page.inner_text("[data-testid=outcome]")
    assert f'"words": {len(WORD.findall(text))}' in outcome, outcome
    assert not [c for c in console if c.startswith(("error", "pageerror"))], console


def test_an_invalid_payload_shows_the_servers_error_and_makes_no_job(
    browser: Browser, dev_url: str, conn: psycopg.Connection[Any]
) -> None:
    """An empty text fails the contract: the page shows the message, and no job exists."""
    console: list[str] = []
    page = open_page(browser, dev_url, console)
    page.select_option("[data-testid=queue]", "text_report")
    page.fill("[data-testid=payload]", '{"text": ""}')
    page.click("[data-testid=submit]")
    page.wait_for_function("document.querySelector('[data-testid=form-error]').textContent.length > 0")
    assert "text" in page.inner_text("[data-testid=form-error]")
    assert page.is_hidden("[data-testid=job]")
    row = conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone()
    assert row is not None and row[0] == 0
