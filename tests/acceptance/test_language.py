"""The language pipeline (handlers/language.py) end to end, against real Postgres.

The LLM is a local HTTP server each test starts on 127.0.0.1 (tests/support/standins.py): a stand-in for
an OpenAI-compatible `POST /v1/chat/completions` that answers the translation and the example
sentences as JSON and counts the requests it gets. OCR (Tesseract), lemmas (simplemma) and audio
(espeak-ng) run for real on the sample page the repository ships (handlers/samples/page_de.png).
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from db.connect import Target
from handlers.language import LANGUAGE_PAGE, MAX_IMAGE_BYTES, Translation, read_page, sample_page, speak
from handlers.llm import NOT_CONFIGURED, LlmSettings, chat, parse_answer
from handlers.provider import ProviderError
from handlers.samples.make_sample import TEXT
from queues import InvalidPayload, enqueue, load_catalog, pgmq
from queues.artifacts import MAX_ARTIFACT_BYTES
from tests.support.fixtures import BurstWorker
from tests.support.helpers import captured, dead, job, rows, run_burst, visible_now
from tests.support.processes import REPO, sigkill, spawned, worker_process
from tests.support.standins import TRANSLATION, LlmStandIn, llm_server
from tests.support.tokens import SECRET, token
from web import create_app
from web.settings import WebSettings
from worker import Context, Permanent, RateLimited, Registry, handler

QUEUE = LANGUAGE_PAGE.queue
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
LLM_ENV = ("PGMQ_WORKER_LLM_BASE_URL", "PGMQ_WORKER_LLM_MODEL", "PGMQ_WORKER_LLM_API_KEY")

registry = Registry.from_modules(["handlers"])  # the reference handlers, as `pgmq-worker run` loads them


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Tesseract (with German) and espeak-ng, which .ci/run installs; skipped without them locally."""
    missing = [tool for tool in ("tesseract", "espeak-ng") if shutil.which(tool) is None]
    if not missing:
        langs = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=False)
        missing += [] if "deu" in langs.stdout.split() else ["tesseract-ocr-deu"]
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install tesseract-ocr tesseract-ocr-deu espeak-ng)"
        if os.environ.get("PGMQ_WORKER_REQUIRE_LANGUAGE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)


# -- the LLM stand-in (tests/support/standins.py) ------------------------------------------------------


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlmStandIn]:
    """The stand-in LLM on 127.0.0.1, and the settings that point the handler at it."""
    with llm_server() as state:
        for name, value in state.env.items():
            monkeypatch.setenv(name, value)
        yield state


@pytest.fixture
def no_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLM configured, whatever the environment says."""
    for name in LLM_ENV:
        monkeypatch.delenv(name, raising=False)


# -- reading state ------------------------------------------------------------------------------------


def steps_of(conn: psycopg.Connection[Any], job_id: Any) -> dict[str, tuple[str, int, Any]]:
    cur = conn.execute(
        "SELECT name, status, attempts, output FROM pgmq_worker.job_steps WHERE job_id = %s", (job_id,)
    )
    return {name: (status, attempts, output) for name, status, attempts, output in cur.fetchall()}


def artifact(conn: psycopg.Connection[Any], job_id: Any, name: str) -> tuple[str, bytes]:
    row = conn.execute(
        "SELECT content_type, data FROM pgmq_worker.job_artifacts WHERE job_id = %s AND name = %s",
        (job_id, name),
    ).fetchone()
    assert row is not None, f"no artifact {name}"
    return str(row[0]), bytes(row[1])


def close_to(text: str, expected: str) -> bool:
    """OCR output equal to `expected` up to whitespace and a few misread characters."""
    ratio = difflib.SequenceMatcher(None, " ".join(text.split()), " ".join(expected.split())).ratio()
    return ratio >= 0.97


def send_page(conn: psycopg.Connection[Any], payload: dict[str, Any], owner: uuid.UUID | None = None) -> int:
    pgmq.ensure_queue(conn, QUEUE)
    return enqueue(conn, LANGUAGE_PAGE, payload, owner=owner).msg_id


def run_language(target: Target) -> None:
    run_burst(target, registry, queues=(QUEUE,))


# -- the pipeline ---------------------------------------------------------------------------------------


def test_the_pipeline_reads_translates_lemmatises_and_speaks_the_sample_page(
    target: Target, conn: psycopg.Connection[Any], llm: LlmStandIn
) -> None:
    """Every step runs once: OCR of the sample close to its text, the stand-in's translation, lemmas
    with their forms, one example sentence per top lemma, a WAV per sentence, the lesson as JSON."""
    msg_id = send_page(conn, {"words": 40, "sentences": 2})
    run_language(target)
    row = job(conn, QUEUE, msg_id)
    assert (row["status"], row["progress"], row["step"]) == ("succeeded", 100, "store"), row["error"]
    result = row["result"]
    assert close_to(result["text"], TEXT), result["text"]
    assert result["translation"] == TRANSLATION and result["skipped"] == {}
    forms = {w["lemma"]: w["forms"] for w in result["words"]}
    assert {
        "Apfel": ["Äpfel"],
        "wohnen": ["wohnt"],
        "Plan": ["Pläne"],
        "klein": ["kleinen"],
    }.items() <= forms.items()
    assert not {"der", "die", "und", "wir"} & set(forms)  # stopwords are not taught
    top = [w["lemma"] for w in result["words"][:2]]
    assert [s["lemma"] for s in result["sentences"]] == top == ["Samstag", "fahren"]
    assert [c["text"] for c in result["audio"]] == [f"Das Wort {w} ist neu." for w in top]
    for i, clip in enumerate(result["audio"], start=1):
        assert clip["url"] == f"/jobs/{row['id']}/artifacts/sentence-{i}.wav" and clip["seconds"] > 0.5
        content_type, data = artifact(conn, row["id"], f"sentence-{i}.wav")
        assert content_type == "audio/wav" and data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert result["lesson_url"] == f"/jobs/{row['id']}/artifacts/lesson.json"
    lesson = json.loads(artifact(conn, row["id"], "lesson.json")[1])
    assert lesson == {k: v for k, v in result.items() if k != "lesson_url"}
    steps = steps_of(conn, row["id"])
    done = {name: (status, attempts) for name, (status, attempts, _) in steps.items()}
    assert done == dict.fromkeys(("ocr", "translate", "words", "sentences", "audio", "store"), ("done", 1))
    assert [r["task"] for r in llm.requests] == ["translate", "sentences"]
    translate, sentences = (r["body"] for r in llm.requests)
    assert translate["model"] == "stand-in-1" and translate["response_format"] == {"type": "json_object"}
    assert translate["messages"][1]["content"] == result["text"]  # the OCR text is what gets translated
    assert json.loads(sentences["messages"][1]["content"]) == {"words": top}
    assert {r["authorization"] for r in llm.requests} == {"Bearer test-key"}


def test_without_an_llm_the_llm_steps_are_skipped_not_faked(
    target: Target, conn: psycopg.Connection[Any], no_llm: None
) -> None:
    """No PGMQ_WORKER_LLM_BASE_URL: translate and sentences end as skipped with the reason; the audio
    reads the page's own first sentences; OCR and lemmas still run."""
    msg_id = send_page(conn, {"sentences": 2})
    run_language(target)
    row = job(conn, QUEUE, msg_id)
    assert row["status"] == "succeeded", row["error"]
    result = row["result"]
    assert result["skipped"] == {"translate": NOT_CONFIGURED, "sentences": NOT_CONFIGURED}
    assert "PGMQ_WORKER_LLM_BASE_URL" in NOT_CONFIGURED
    assert result["translation"] is None and result["sentences"] == []
    assert close_to(result["text"], TEXT) and len(result["words"]) == 10
    spoken = [c["text"] for c in result["audio"]]
    assert close_to(
        " ".join(spoken), "Am Samstag fahren wir mit dem Zug nach Hamburg. " + TEXT.split(". ")[1] + "."
    )
    steps = steps_of(conn, row["id"])
    assert steps["translate"] == ("done", 1, {"skipped": NOT_CONFIGURED})
    assert steps["sentences"] == ("done", 1, {"skipped": NOT_CONFIGURED})


def test_a_429_from_the_llm_is_a_deferral_not_an_attempt(
    target: Target, conn: psycopg.Connection[Any], llm: LlmStandIn
) -> None:
    """The first translate call gets 429 Retry-After: 1: the job comes back about a second later,
    not counted as an attempt, resumes after OCR and finishes."""
    llm.rate_limit = 1
    msg_id = send_page(conn, {"sentences": 1})
    with captured() as logs:
        run_language(target)
    row = job(conn, QUEUE, msg_id)
    assert row["status"] == "succeeded", row["error"]
    assert (row["attempts"], row["deferrals"]) == (2, 1)  # two deliveries, one of them deferred
    assert [e["attempt"] for e in logs if e["event"] == "job.started"] == [1, 1]
    assert [r["task"] for r in llm.requests] == ["translate", "translate", "sentences"]
    assert llm.requests[1]["at"] - llm.requests[0]["at"] >= 0.95  # Retry-After honoured
    steps = steps_of(conn, row["id"])
    assert steps["ocr"][:2] == ("done", 1)  # resumed, not read again
    assert steps["translate"][:2] == ("done", 1)  # the 429 was a deferral, not one of its attempts
    assert dead(conn, QUEUE) == []


@pytest.mark.slow
def test_a_worker_killed_after_translate_resumes_without_asking_the_llm_again(
    db_url: str, conn: psycopg.Connection[Any], llm: LlmStandIn, tmp_path: Path
) -> None:
    """A `pgmq-worker run` process SIGKILLed while the stand-in holds the `sentences` request: the
    next worker resumes at `sentences`; OCR, translate and words ran once, translate was asked once.

    The killed delivery's message would reappear after its 60 s visibility timeout; the test makes
    it visible at once (its `vt` set to now) instead of waiting.
    """
    llm.hold_sentences = threading.Event()
    msg_id = send_page(conn, {"sentences": 1})
    argv, env = worker_process(db_url, "handlers.language", **llm.env)
    command = [*argv, "--queue", QUEUE]
    log = tmp_path / "first.log"
    with spawned(command, env, log) as first:
        assert llm.sentences_asked.wait(30), log.read_text()[-3000:]
        row = job(conn, QUEUE, msg_id)
        assert {n: s[0] for n, s in steps_of(conn, row["id"]).items()} == {
            "ocr": "done",
            "translate": "done",
            "words": "done",
            "sentences": "running",
        }
        sigkill(first)
    llm.hold_sentences.set()
    visible_now(conn, QUEUE, msg_id)

    second = subprocess.run(
        [*command, "--burst"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 0, second.stderr[-3000:]
    row = job(conn, QUEUE, msg_id)
    assert row["status"] == "succeeded", row["error"]
    assert (llm.count("translate"), llm.count("sentences")) == (1, 2)
    steps = steps_of(conn, row["id"])
    assert {name: attempts for name, (_, attempts, _) in steps.items()} == {
        "ocr": 1,
        "translate": 1,
        "words": 1,
        "sentences": 2,
        "audio": 1,
        "store": 1,
    }
    assert row["result"]["translation"] == TRANSLATION and len(row["result"]["audio"]) == 1
    assert rows(conn, QUEUE) == []


# -- artifacts over HTTP -----------------------------------------------------------------------------------


def test_the_artifact_route_serves_the_wav_to_the_jobs_owner_only(
    target: Target, conn: psycopg.Connection[Any], no_llm: None
) -> None:
    """GET /jobs/{id}/artifacts/{name}: the owner gets the WAV (header or ?access_token=, for <audio>);
    another user gets the 404 of an unknown job; an unknown name is a 404 of its own."""
    msg_id = send_page(conn, {"sentences": 1}, owner=ALICE)
    run_language(target)
    row = job(conn, QUEUE, msg_id)
    url = row["result"]["audio"][0]["url"]
    app = create_app(target, settings=WebSettings(jwt_secret=SECRET), catalog=load_catalog(["handlers"]))
    with TestClient(app) as client:
        for answer in (
            client.get(url, headers={"Authorization": f"Bearer {token(ALICE)}"}),
            client.get(url, params={"access_token": token(ALICE)}),
        ):
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "audio/wav"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.content[:4] == b"RIFF" and answer.content[8:12] == b"WAVE"
            assert answer.content == artifact(conn, row["id"], "sentence-1.wav")[1]
        bob = client.get(url, headers={"Authorization": f"Bearer {token(BOB)}"})
        assert (bob.status_code, bob.json()["error"]["code"]) == (404, "unknown_job")
        assert client.get(url).status_code == 401
        missing = client.get(
            f"/jobs/{row['id']}/artifacts/nothing.wav", headers={"Authorization": f"Bearer {token(ALICE)}"}
        )
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_artifact")
        lesson = client.get(row["result"]["lesson_url"], params={"access_token": token(ALICE)})
        assert lesson.headers["content-type"] == "application/json"
        assert lesson.json()["text"] == row["result"]["text"]


def test_artifacts_over_the_limit_or_badly_named_end_the_job(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """ctx.artifact refuses more than 10 MB, or a name with a slash: Permanent, with the reason."""

    @handler("too_big", registry=reg)
    async def too_big(payload: dict[str, Any], ctx: Context) -> str:
        if payload["kind"] == "size":
            return await ctx.artifact("big.bin", b"\0" * (MAX_ARTIFACT_BYTES + 1), "application/octet-stream")
        return await ctx.artifact("../etc/passwd", b"x", "text/plain")

    pgmq.ensure_queue(conn, "too_big")
    first = pgmq.send(conn, "too_big", {"kind": "size"})
    pgmq.send(conn, "too_big", {"kind": "name"})
    burst_worker(reg)
    size, name = sorted(dead(conn, "too_big"), key=lambda r: r["msg_id"] != first)
    assert size["reason"] == name["reason"] == "permanent"
    assert f"over the {MAX_ARTIFACT_BYTES}-byte limit" in size["error"]["message"]
    assert "artifact name '../etc/passwd'" in name["error"]["message"]
    assert conn.execute("SELECT count(*) FROM pgmq_worker.job_artifacts").fetchone() == (0,)


# -- bad input -------------------------------------------------------------------------------------------


def png(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 255).save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"image_base64": "not base64!"}, "not valid base64"),
        ({"image_base64": b64(b"hello, I am text")}, "not a PNG or JPEG image"),
        ({"image_base64": b64(png()[:30])}, "not a readable PNG or JPEG image"),
        ({"image_base64": b64(b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES))}, "over the 716800-byte limit"),
        ({"image_base64": b64(png(6000, 5000))}, "6000x5000 pixels"),
        ({"target_language": "de"}, "must differ"),
        ({"source_language": "fr", "target_language": "en"}, "the sample page is read, and it is German"),
        ({"source_language": "xx"}, "source_language"),
        ({"words": 0}, "words"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_pages_are_refused_with_the_reason(payload: dict[str, Any], message: str) -> None:
    """Not base64, not an image, a damaged or oversized one, a bad language or count: InvalidPayload."""
    with pytest.raises(InvalidPayload, match=message):
        LANGUAGE_PAGE.parse(payload)


def test_good_pages_are_accepted() -> None:
    """A PNG or JPEG, plain or as a data: URL; no image at all means the sample page."""
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    for image in (b64(png()), f"data:image/png;base64,{b64(png())}", b64(jpeg.getvalue())):
        page = LANGUAGE_PAGE.parse({"image_base64": image, "source_language": "en", "target_language": "de"})
        assert page.image()[:2] in (b"\x89P", b"\xff\xd8")
    assert LANGUAGE_PAGE.parse({}).image() == sample_page()
    assert len(sample_page()) < 100_000


def test_the_web_process_refuses_bad_pages_and_the_worker_dead_letters_them(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """POST with a text file as the image is a 422 naming the problem; a body over 1 MB a 413; a bad
    page sent straight to pgmq (another client) is dead-lettered as invalid_payload, never OCRed."""
    with TestClient(create_app(target, catalog=load_catalog(["handlers"]))) as client:
        answer = client.post(f"/jobs/{QUEUE}", json={"image_base64": b64(b"plain text")})
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "invalid_payload"
        assert "not a PNG or JPEG image" in answer.json()["error"]["message"]
        huge = client.post(f"/jobs/{QUEUE}", json={"image_base64": "A" * 1_100_000})
        assert huge.status_code == 413
    assert rows(conn, QUEUE) == []
    pgmq.send(conn, QUEUE, {"image_base64": b64(b"GIF89a...")})
    run_language(target)
    [record] = dead(conn, QUEUE)
    assert record["reason"] == "invalid_payload" and "not a PNG or JPEG image" in record["error"]["message"]


# -- the tools and the LLM client on their own ------------------------------------------------------------


def test_the_module_imports_without_tesseract_or_espeak_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the programs on PATH, importing works; OCR and audio fail with the package to install."""
    bare = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(REPO)}
    imported = subprocess.run(
        [sys.executable, "-c", "import handlers.language"],
        env=bare,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Permanent, match="apt-get install tesseract-ocr"):
        read_page(sample_page(), "deu")
    with pytest.raises(Permanent, match="apt-get install espeak-ng"):
        speak("Hallo", "de")


def test_missing_language_data_names_its_package() -> None:
    """A language Tesseract has no data for is Permanent, naming the Debian package."""
    installed = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=False)
    if "ita" in installed.stdout.split():
        pytest.skip("tesseract-ocr-ita is installed here")
    with pytest.raises(Permanent, match="apt-get install tesseract-ocr-ita"):
        read_page(sample_page(), "ita")


def reply(content: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({}, "no choices"),
        ({"choices": []}, "no choices"),
        (reply(None), "content is empty"),
        (reply("Sure! Here is your translation."), "not JSON"),
        (reply('{"text": "hi"}'), "translation: Field required"),
        (reply('{"translation": ""}'), "translation: String should have at least 1 character"),
    ],
)
def test_malformed_llm_answers_are_clear_errors(answer: dict[str, Any], message: str) -> None:
    """An answer without the JSON object asked for is a ProviderError (retried) that says what is wrong."""
    with pytest.raises(ProviderError, match=message):
        parse_answer(answer, Translation)


def test_fenced_json_answers_are_accepted() -> None:
    """Some models wrap the JSON in a ```json block: that still parses."""
    assert parse_answer(reply('```json\n{"translation": "hi"}\n```'), Translation).translation == "hi"


def llm_ctx() -> Context:
    return Context.for_test(QUEUE, max_attempts=3)


def status_server(status: int, headers: dict[str, str]) -> ThreadingHTTPServer:
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [(429, {"Retry-After": "7"}, RateLimited), (502, {}, ProviderError), (401, {}, Permanent)],
)
def test_llm_http_errors_map_to_what_the_job_should_do(
    status: int, headers: dict[str, str], error: type[Exception]
) -> None:
    """429 is RateLimited with the Retry-After delay; 5xx an ordinary (retried) failure; 401 Permanent."""
    server = status_server(status, headers)
    settings = LlmSettings(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")

    async def ask() -> None:
        async with chat(llm_ctx(), settings) as client:
            await client.ask("You translate", "Hallo", Translation)

    try:
        with pytest.raises(error) as caught:
            asyncio.run(ask())
    finally:
        server.shutdown()
        server.server_close()
    if isinstance(caught.value, RateLimited):
        assert caught.value.delay == 7.0


def test_a_timeout_is_an_ordinary_failure() -> None:
    """An LLM that does not answer in time raises httpx's timeout: a failed attempt, retried with backoff."""
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings = LlmSettings(
            base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", request_timeout=0.3
        )

        async def ask() -> None:
            async with chat(llm_ctx(), settings) as client:
                await client.ask("You translate", "Hallo", Translation)

        with pytest.raises(httpx.TimeoutException):
            asyncio.run(ask())
