"""The dev page in a real browser: Debian's Chromium, headless, driven by Playwright.

`pgmq-worker dev` runs as a subprocess on the test's database; the browser opens the URL it prints,
submits a job and watches the bar and the step label move to the result. The two reference pipelines
run from the page too: the LLM and the images API they call are local HTTP stand-ins started by
these tests (tests/support/standins.py); OCR, lemmas and speech run for real. Without Chromium the module
is skipped, unless PGMQ_WORKER_REQUIRE_CHROMIUM=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
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

from handlers.language import STEPS as LANGUAGE_STEPS
from handlers.samples.make_sample import FONT, render
from tests.support.ports import free_port
from tests.support.standins import TRANSLATION, ImagesStandIn, LlmStandIn, images_server, llm_server
from tests.support.tokens import token

REQUIRE_ENV = "PGMQ_WORKER_REQUIRE_CHROMIUM"
SCREENSHOTS_ENV = "PGMQ_WORKER_SCREENSHOTS"  # a folder: the tests save the pages the docs show
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


@dataclass(frozen=True, slots=True)
class Providers:
    """The local stand-ins for the pipelines' HTTP providers."""

    llm: LlmStandIn
    images: ImagesStandIn


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
def providers() -> Iterator[Providers]:
    """The stand-in LLM and images API the reference pipelines call from the dev process."""
    with llm_server() as llm, images_server() as images:
        yield Providers(llm, images)


@pytest.fixture
def dev_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Extra environment for `dev` (a test sets it with indirect parametrisation)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def dev(db_url: str, tmp_path: Path, providers: Providers, dev_env: dict[str, str]) -> Iterator[Dev]:
    """`pgmq-worker dev` on the test's database; stopped with SIGINT (Ctrl-C), which must exit 0."""
    # Only the settings this test chooses: a developer's PGMQ_WORKER_* must not change what runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGMQ_WORKER_", "SUPABASE_"))}
    env.update(DATABASE_URL=db_url, PGMQ_WORKER_LOG_FORMAT="json", PGMQ_WORKER_POLL_INTERVAL="0.2")
    env.update(providers.llm.env | providers.images.env | dev_env)
    argv = [sys.executable, "-m", "worker.cli", "dev", "--port", str(free_port())]
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


def watch(tab: Page, console: list[str], dev: Dev, timeout: float) -> list[dict[str, str | None]]:
    """What the page showed every 50 ms until its status was final (the last snapshot)."""
    seen: list[dict[str, str | None]] = []
    deadline = time.monotonic() + timeout
    while True:
        snapshot = tab.evaluate(SNAPSHOT_JS)
        seen.append(snapshot)
        if snapshot["status"] in FINISHED:
            return seen
        assert time.monotonic() < deadline, (
            f"no finished status within {timeout:.0f} s; last {seen[-3:]}\nconsole: {console}\n{dev.log()}"
        )
        tab.wait_for_timeout(50)


def steps_listed(tab: Page) -> list[tuple[str, str]]:
    """The page's step list: (name, class) per item."""
    listed = tab.eval_on_selector_all(
        "[data-testid=steps] li", "items => items.map((i) => [i.textContent, i.className])"
    )
    return [(name, cls) for name, cls in listed]


def screenshot(tab: Page, name: str) -> None:
    """Save the page for the docs when PGMQ_WORKER_SCREENSHOTS names a folder (docs/assets/screenshots)."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True, animations="disabled")


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

    seen = watch(tab, console, dev, JOB_TIMEOUT_S)
    snapshot = seen[-1]
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
    listed = steps_listed(tab)
    assert len(listed) >= 3 and all(cls == "done" for _, cls in listed), f"steps list: {listed}{where}"
    screenshot(tab, "dev-page-text-report")

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


UPLOADED = "Der Hund schläft im Garten. Die Katze trinkt kalte Milch. Der Hund träumt vom Garten."
PIPELINE_TIMEOUT_S = 90.0


def page_png(text: str) -> bytes:
    """A page of `text` rendered like the shipped sample (DejaVu Sans, fonts-dejavu-core)."""
    out = io.BytesIO()
    render(text, FONT).save(out, format="PNG")
    return out.getvalue()


def run_to_success(
    tab: Page, console: list[str], dev: Dev, payload: dict[str, Any]
) -> tuple[list[dict[str, str | None]], str]:
    """Submit `payload` to the selected queue; what the page showed, and its result once succeeded."""
    tab.fill("[data-testid=payload]", json.dumps(payload))
    tab.click("[data-testid=submit]")
    seen = watch(tab, console, dev, PIPELINE_TIMEOUT_S)
    outcome = tab.inner_text("[data-testid=outcome]")
    where = f"\nconsole: {console}\nsnapshots: {seen[-5:]}\n{dev.log()}"
    assert seen[-1]["status"] == "succeeded", f"outcome {outcome}{where}"
    return seen, outcome


def loaded_media(tab: Page) -> list[dict[str, Any]]:
    """Each image and audio element under the artifacts box, with what the browser made of it."""
    return list(
        tab.eval_on_selector_all(
            "[data-testid=artifacts] img, [data-testid=artifacts] audio",
            """items => items.map((e) => ({
                tag: e.tagName.toLowerCase(), src: e.getAttribute('src'), title: e.title,
                width: e.naturalWidth || 0, ready: e.readyState || 0, complete: !!e.complete,
            }))""",
        )
    )


def test_the_language_pipeline_runs_from_the_page_on_an_uploaded_image(
    page: tuple[Page, list[str]], dev: Dev, providers: Providers, conn: psycopg.Connection[Any]
) -> None:
    """Pick language_page, upload a page image: OCR reads the upload, the stand-in LLM translates,
    every declared step is ticked in order, and the page plays the sentences' audio artifacts."""
    tab, console = page
    tab.select_option("[data-testid=queue]", "language_page")
    assert tab.locator("[data-testid=file]").is_visible(), "no file input for image_base64"
    tab.set_input_files(
        "[data-testid=file]",
        files=[{"name": "page.png", "mimeType": "image/png", "buffer": page_png(UPLOADED)}],
    )
    tab.wait_for_function(
        "() => JSON.parse(document.querySelector('[data-testid=payload]').value).image_base64"
    )
    payload = json.loads(tab.input_value("[data-testid=payload]"))
    payload.update(words=6, sentences=2)
    seen, outcome = run_to_success(tab, console, dev, payload)
    shown = [s["step"] for s in seen if s["step"]]
    order = [name for i, name in enumerate(shown) if i == 0 or shown[i - 1] != name]
    assert set(order) <= set(LANGUAGE_STEPS) and order == sorted(order, key=LANGUAGE_STEPS.index), order
    assert steps_listed(tab) == [(name, "done") for name in LANGUAGE_STEPS], steps_listed(tab)

    result = json.loads(outcome)
    assert "Hund" in result["text"] and "Katze" in result["text"], result[
        "text"
    ]  # the upload, not the sample
    assert result["translation"] == TRANSLATION and result["skipped"] == {}
    lemmas = [w["lemma"] for w in result["words"]]
    assert lemmas[:2] == ["Hund", "Garten"], lemmas
    assert [r["task"] for r in providers.llm.requests] == ["translate", "sentences"]
    assert providers.llm.requests[0]["body"]["messages"][1]["content"] == result["text"]

    job_id = tab.inner_text("[data-testid=job-id]")
    tab.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=artifacts] audio')]"
        ".every((a) => a.readyState >= 1)"
    )
    media = loaded_media(tab)
    assert [(m["tag"], m["src"]) for m in media] == [
        ("audio", f"jobs/{job_id}/artifacts/sentence-{i}.wav") for i in (1, 2)
    ], media
    served = tab.request.get(f"{dev.url.rstrip('/')}/jobs/{job_id}/artifacts/sentence-1.wav")
    assert served.status == 200 and served.headers["content-type"] == "audio/wav", served.status
    assert served.body()[:4] == b"RIFF"
    steps = conn.execute(
        "SELECT name, status, attempts FROM pgmq_worker.job_steps WHERE job_id = %s", (job_id,)
    ).fetchall()
    assert sorted(steps) == sorted((name, "done", 1) for name in LANGUAGE_STEPS), steps
    assert not [c for c in console if c.startswith(("console.error", "pageerror"))], console


def test_the_image_batch_fans_out_from_the_page_and_shows_partial_success(
    page: tuple[Page, list[str]], dev: Dev, providers: Providers, conn: psycopg.Connection[Any]
) -> None:
    """Pick image_batch with four prompts: one image fails at the provider, one outlives its 2.5 s
    timeout; the batch succeeds as 2 of 4, the bar rises as children finish, and the page shows
    the two generated images."""
    tab, console = page
    tab.select_option("[data-testid=queue]", "image_batch")
    assert tab.locator("[data-testid=file]").is_hidden()
    prompts = ["a lighthouse at dawn", "a broken teapot", "a slow sunset", "a red fox in snow"]
    payload = {
        "prompts": prompts,
        "per_image_timeout": 2.5,  # room for a fast image on a loaded machine; the slow one sleeps 4 s
        "max_attempts": 1,
        "max_running": 2,
        "min_success": 0.5,
    }
    seen, outcome = run_to_success(tab, console, dev, payload)
    result = json.loads(outcome)
    assert result["summary"] == "2 of 4 succeeded (1 failed, 1 timed out)", result
    by_prompt = {image["prompt"]: image for image in result["images"]}
    assert [by_prompt[p]["status"] for p in prompts] == ["succeeded", "dead", "dead", "succeeded"], result
    assert by_prompt["a slow sunset"]["timed_out"] and not by_prompt["a broken teapot"]["timed_out"]
    assert "model overloaded" in by_prompt["a broken teapot"]["error"]
    rising = {int(s["now"]) for s in seen if s["now"] is not None and 0 < int(s["now"]) < 100}
    assert rising, f"the bar never stood between 0 and 100: {seen}"
    assert [name for name, cls in steps_listed(tab)] == ["plan", "generate", "collect"], steps_listed(tab)
    assert all(cls == "done" for _, cls in steps_listed(tab)), steps_listed(tab)

    tab.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=artifacts] img')].every((i) => i.complete)"
    )
    media = loaded_media(tab)
    expected = [by_prompt[p]["url"].lstrip("/") for p in ("a lighthouse at dawn", "a red fox in snow")]
    assert sorted(m["src"] for m in media) == sorted(expected), media
    assert all(m["tag"] == "img" and m["width"] == 1 for m in media), media  # decoded 1x1 PNGs
    asked = sorted(r["prompt"] for r in providers.images.requests)
    assert asked == sorted(prompts), asked  # one request per image: no retries with max_attempts 1
    children = conn.execute(
        "SELECT count(*) FROM pgmq_worker.jobs WHERE parent_id = %s",
        (tab.inner_text("[data-testid=job-id]"),),
    ).fetchone()
    assert children == (4,), children
    screenshot(tab, "dev-page-image-batch")
    assert not [c for c in console if c.startswith(("console.error", "pageerror"))], console


SECRET = "browser-test-jwt-secret-of-32-chars!"


def access_token(expires_in: float) -> str:
    """A Supabase-style access token for one user, expiring in `expires_in` seconds."""
    return token("00000000-0000-0000-0000-00000000000a", secret=SECRET, expires_in=expires_in)


@pytest.mark.parametrize("dev_env", [{"SUPABASE_JWT_SECRET": SECRET}], indirect=True)
def test_the_page_reconnects_with_a_fresh_token_when_its_stream_expires(
    browser: Browser, dev: Dev, tmp_path: Path
) -> None:
    """With a JWT secret: the page loads its queues with the token (under its CSP), submits, and
    when the server ends the stream at the token's expiry the page reconnects with the token it
    holds now and follows the job to success; a page without a token says it needs one."""
    short = access_token(5)
    context = browser.new_context()
    console: list[str] = []
    try:
        bare = context.new_page()
        bare.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        bare.goto(dev.url)
        bare.locator("[data-testid=form-error]").filter(has_text="access token").wait_for(timeout=5000)
        bare.close()
        console.clear()  # the 401 of /queues is logged by the browser as a failed resource

        context.add_init_script(f"sessionStorage.setItem('pgmq-worker-token', {json.dumps(short)})")
        tab = context.new_page()
        tab.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        tab.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        streams: list[str] = []
        tab.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
        tab.goto(dev.url)
        tab.wait_for_selector("[data-testid=queue] option[value=text_report]", state="attached")
        tab.select_option("[data-testid=queue]", "text_report")
        tab.fill(
            "[data-testid=payload]", json.dumps({"text": "One step. Then another. And more.", "pace": 1.5})
        )
        tab.click("[data-testid=submit]")
        tab.wait_for_selector("[data-testid=job]:not([hidden])")
        fresh = access_token(3600)
        tab.locator("details").evaluate("(d) => { d.open = true; }")
        tab.fill("#token", fresh)  # what an app does when it refreshes its Supabase session
        seen = watch(tab, console, dev, JOB_TIMEOUT_S)
        tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    finally:
        context.close()
    assert seen[-1]["status"] == "succeeded", seen[-3:]
    assert len(streams) >= 2, streams
    assert short in streams[0] and fresh in streams[-1], streams
    assert all(short not in url for url in streams[1:]), streams
    assert not [c for c in console if c.startswith(("console.error", "pageerror"))], console
    assert "sse.token_expired" in dev.stderr_path.read_text()
