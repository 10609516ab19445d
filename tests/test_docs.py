"""The tutorial's code (docs/tutorial/myapp) runs as the tutorial says: enqueue, work, progress."""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db.connect import Target
from tests.helpers import run_burst
from worker import registry

MYAPP = Path(__file__).resolve().parents[1] / "docs" / "tutorial" / "myapp"
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
        run_burst(target, registry, queues=("word_report",))
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
        run_burst(target, registry, queues=("word_report",))
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
            run_burst(target, registry, queues=("word_report",))
            job = client.get(f"/reports/{job_id}").json()
    finally:
        mp.undo()
    assert calls == ["count", "rank", "rank"]
    assert job["attempts"] == 2
    finished(job)
