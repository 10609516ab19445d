"""The documentation's code runs: the tutorial's apps, the how-to examples, every Python block parses."""

from __future__ import annotations

import ast
import base64
import importlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from db.connect import Target
from queues import enqueue
from tests.support.helpers import job, run_burst
from worker import Registry

DOCS = Path(__file__).resolve().parents[2] / "docs"
MYAPP = DOCS / "tutorial" / "myapp"
EXAMPLES = DOCS / "how-to" / "examples"
TEXT = "to be or not to be, that is the question"


@pytest.fixture
def myapp(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """The tutorial's modules, imported from its folder as `pgmq-worker run --import jobs` would."""
    monkeypatch.syspath_prepend(str(MYAPP))
    return {name: importlib.import_module(name) for name in ("jobs", "app_fastapi", "app_flask")}


def finished(job: dict[str, Any]) -> None:
    """What the page shows once the worker ran the two steps."""
    assert job["status"] == "succeeded", job
    assert (job["progress"], job["step"]) == (100, "rank")
    assert job["result"] == {
        "words": 10,
        "unique_words": 8,
        "top": [["be", 2], ["to", 2], ["is", 1]],
    }


def test_fastapi_app_enqueues_and_shows_progress(target: Target, myapp: dict[str, ModuleType]) -> None:
    """POST /reports queues a job; after a worker ran it, GET /reports/{id} shows the result."""
    with TestClient(myapp["app_fastapi"].create_app(target)) as client:
        assert "/reports" in client.get("/").text
        sent = client.post("/reports", json={"text": TEXT})
        assert sent.status_code == 202, sent.text
        job_id = sent.json()["job_id"]
        assert client.get(f"/reports/{job_id}").json()["status"] == "queued"
        run_burst(target, Registry.from_modules(["jobs"]), queues=("word_report",))
        finished(client.get(f"/reports/{job_id}").json())

        assert client.post("/reports", json={"text": ""}).status_code == 422
        assert client.post("/reports", json={"text": TEXT, "colour": "red"}).status_code == 422
        assert client.get("/reports/not-a-uuid").status_code == 422
        assert client.get(f"/reports/{uuid.uuid4()}").status_code == 404


def test_flask_app_enqueues_and_shows_progress(target: Target, myapp: dict[str, ModuleType]) -> None:
    """The Flask twin: the same routes, the same job, the same answers (422 for a bad payload)."""
    app = myapp["app_flask"].create_app(target)
    try:
        client = app.test_client()
        assert "/reports" in client.get("/").get_data(as_text=True)
        sent = client.post("/reports", json={"text": TEXT, "top": 3})
        assert sent.status_code == 202, sent.get_data(as_text=True)
        job_id = sent.get_json()["job_id"]
        assert client.get(f"/reports/{job_id}").get_json()["status"] == "queued"
        run_burst(target, Registry.from_modules(["jobs"]), queues=("word_report",))
        finished(client.get(f"/reports/{job_id}").get_json())

        assert client.post("/reports", json={"text": TEXT, "top": 0}).status_code == 422
        assert client.post("/reports", data="not json").status_code == 422
        assert client.get("/reports/not-a-uuid").status_code == 404
        assert client.get(f"/reports/{uuid.uuid4()}").status_code == 404
    finally:
        app.extensions["pool"].close()


def test_a_retry_resumes_at_the_second_step(target: Target, myapp: dict[str, ModuleType]) -> None:
    """The tutorial's claim: when `rank` fails, the next delivery starts at `rank` (count ran once)."""
    jobs = myapp["jobs"]
    calls: list[str] = []
    real_count, real_rank = jobs.count_words, jobs.rank

    def count(text: str) -> dict[str, int]:
        calls.append("count")
        return dict(real_count(text))

    def flaky_rank(counts: dict[str, int], top: int) -> list[list[object]]:
        calls.append("rank")
        if calls.count("rank") == 1:
            raise RuntimeError("the first try fails")
        return list(real_rank(counts, top))

    mp = pytest.MonkeyPatch()
    mp.setattr(jobs, "count_words", count)
    mp.setattr(jobs, "rank", flaky_rank)
    try:
        with TestClient(myapp["app_fastapi"].create_app(target)) as client:
            job_id = client.post("/reports", json={"text": TEXT}).json()["job_id"]
            run_burst(target, Registry.from_modules(["jobs"]), queues=("word_report",))
            job = client.get(f"/reports/{job_id}").json()
    finally:
        mp.undo()
    assert calls == ["count", "rank", "rank"]
    assert job["attempts"] == 2
    finished(job)


def test_the_handoff_example_sends_the_next_message_with_the_ack(
    target: Target, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/how-to/examples/handoff.py: the page's words reach word_index, whose job then succeeds."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    handoff = importlib.import_module("handoff")
    from queues import pgmq  # noqa: PLC0415

    for queue in ("page_words", "word_index"):
        pgmq.ensure_queue(conn, queue)
    sent = enqueue(conn, handoff.PAGES, {"page_id": "p1", "text": "The cat saw the other cat"})
    run_burst(target, Registry.from_modules(["handoff"]), queues=("page_words", "word_index"))
    assert job(conn, "page_words", sent.msg_id)["result"] == {"words": 4}
    row = conn.execute("SELECT status, result FROM pgmq_worker.jobs WHERE queue = 'word_index'").fetchall()
    assert row == [("succeeded", {"page_id": "p1", "indexed": 4})]


class Recorder(BaseHTTPRequestHandler):
    """Keeps each webhook delivery as it arrived (headers and raw body), to replay into the example."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers["content-length"]))
        server.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Any]:
    """A local HTTP endpoint (the outside world of a webhook) on an ephemeral port."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_receiver_example_verifies_real_deliveries(
    target: Target, conn: psycopg.Connection[Any], recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real signed deliveries from a worker verify in docs/how-to/examples/webhook_receiver.py.

    A repeat of a delivery (same webhook-id) is acknowledged but acted on once; a tampered body
    or a wrong secret is refused with 400.
    """
    monkeypatch.syspath_prepend(str(EXAMPLES))
    receiver = importlib.import_module("webhook_receiver")
    secret = "whsec_" + base64.b64encode(b"documentation-example-secret!").decode()
    monkeypatch.syspath_prepend(str(MYAPP))
    jobs = importlib.import_module("jobs")
    from queues import pgmq  # noqa: PLC0415

    pgmq.ensure_queue(conn, "word_report")
    url = f"http://127.0.0.1:{recorder.server_address[1]}/hooks/jobs"
    sent = enqueue(conn, jobs.WORD_REPORT, {"text": "hooked"}, webhook_url=url)
    run_burst(
        target,
        Registry.from_modules(["jobs"]),
        queues=("word_report",),
        webhook_secret=secret,
        webhook_allow_private=True,
    )
    assert len(recorder.received) == 2

    client = TestClient(receiver.create_app(secret))
    for headers, body in recorder.received + recorder.received:  # every delivery twice
        assert client.post("/hooks/jobs", content=body, headers=headers).status_code == 204
    job_id = str(sent.job_id)
    assert client.app.state.events == [
        ("job.running", job_id, "running"),
        ("job.succeeded", job_id, "succeeded"),
    ]

    headers, body = recorder.received[-1]
    tampered = body.replace(b'"succeeded"', b'"dead"')
    assert client.post("/hooks/jobs", content=tampered, headers=headers).status_code == 400
    other = TestClient(receiver.create_app("whsec_" + base64.b64encode(b"another-secret-entirely!").decode()))
    assert other.post("/hooks/jobs", content=body, headers=headers).status_code == 400
    assert json.loads(body)["data"]["status"] == "succeeded"


FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::[a-z_]+)?"$')


def python_blocks() -> list[tuple[str, str, str]]:
    """(page, info string, code) of every Python block in docs/."""
    return [
        (str(page.relative_to(DOCS)), m["info"], m["code"])
        for page in sorted(DOCS.rglob("*.md"))
        for m in FENCE.finditer(page.read_text())
    ]


def test_docs_have_python_blocks() -> None:
    """The scan below finds the blocks (a changed fence style must not make it pass vacuously)."""
    blocks = python_blocks()
    assert len(blocks) > 10
    assert any(INCLUDE.match(code.strip()) for _, _, code in blocks)


@pytest.mark.parametrize(("page", "info", "code"), python_blocks(), ids=lambda v: str(v)[:40])
def test_every_python_block_is_included_or_an_excerpt_and_parses(page: str, info: str, code: str) -> None:
    """A block includes a file that tests import (handlers/, docs/), or is marked an excerpt; all parse."""
    lines = [line for line in code.strip().splitlines() if line.strip()]
    includes = [INCLUDE.match(line) for line in lines]
    if all(includes):
        for m in includes:
            assert m is not None
            path = DOCS.parent / m["path"]
            assert path.is_file(), f"{page}: {m['path']} does not exist"
            assert m["path"].startswith(("handlers/", "docs/")), f"{page}: include from a tested module"
            ast.parse(path.read_text(), m["path"])
        return
    assert 'title="excerpt' in info, f"{page}: a Python block that is neither an include nor an excerpt"
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # excerpts may await, as handler bodies do
    compile(code, page, "exec", flags=flags)


def test_the_openapi_document_describes_the_real_answers(target: Target) -> None:
    """The schemas of the HTTP API page are the web process's answers: same fields, listed statuses."""
    from queues import load_catalog  # noqa: PLC0415
    from web.app import create_app  # noqa: PLC0415

    # text_stats in the catalog, as `pgmq-worker web` loads it from the handlers package.
    with TestClient(create_app(target, catalog=load_catalog(["handlers"]))) as client:
        document = client.app.openapi()  # type: ignore[attr-defined]
        schemas = document["components"]["schemas"]
        sent = client.post("/jobs/text_stats", json={"text": "described"})
        assert sent.status_code == 202, sent.text
        assert set(sent.json()) == set(schemas["Accepted"]["properties"])
        job = client.get(sent.json()["status_url"]).json()
        assert set(job) == set(schemas["JobView"]["properties"])
        assert job["status"] in schemas["JobView"]["properties"]["status"]["enum"]
        listed = client.get("/queues").json()
        assert listed and all(set(q) == set(schemas["QueueView"]["properties"]) for q in listed)
        missing = client.get(f"/jobs/{uuid.uuid4()}")
        assert set(missing.json()) == set(schemas["ErrorBody"]["properties"])
        assert set(missing.json()["error"]) == set(schemas["ErrorDetail"]["properties"])

        answered = {
            ("post", "/jobs/{queue}"): [
                client.post("/jobs/no_such_queue", json={}).status_code,
                client.post("/jobs/text_stats", content=b"{").status_code,
                client.post("/jobs/text_stats", json={"text": ""}).status_code,
                client.post("/jobs/text_stats?delay=-1", json={"text": "x"}).status_code,
                client.post("/jobs/text_stats", content=b" " * (1024 * 1024 + 1)).status_code,
                sent.status_code,
            ],
            ("get", "/jobs/{job_id}"): [200, missing.status_code],
        }
    assert answered[("post", "/jobs/{queue}")][:5] == [404, 400, 422, 400, 413]
    for (method, path), codes in answered.items():
        documented = set(document["paths"][path][method]["responses"])
        assert {str(c) for c in codes} <= documented, (method, path, codes, documented)


README = DOCS.parent / "README.md"
README_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_readme_is_a_front_door() -> None:
    """At most ~10 KB, and it keeps the two commands a newcomer pastes."""
    text = README.read_text()
    assert len(text.encode()) <= 10_500
    assert "pip install -e . && pgmq-worker dev" in text
    assert "pip install -e '.[dev]' && pytest" in text


def test_readme_examples_are_excerpts_of_code_the_tests_run() -> None:
    """Each Python block opens with `# path` and is a run of that file's lines (indentation aside)."""
    blocks = [m["code"] for m in README_BLOCK.finditer(README.read_text())]
    assert len(blocks) >= 2
    for code in blocks:
        first, *rest = code.rstrip("\n").splitlines()
        named = re.fullmatch(r"# ((?:handlers|docs)/[\w/]+\.py)", first)
        assert named, f"a README block must name its file: {first!r}"
        source = [line.strip() for line in (DOCS.parent / named[1]).read_text().splitlines()]
        wanted = [line.strip() for line in rest]
        assert any(source[i : i + len(wanted)] == wanted for i in range(len(source))), named[1]
