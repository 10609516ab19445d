"""The image batch pipeline: fan-out to an images API with per-image timeouts and partial success.

The images API is a local HTTP server started by these tests (tests/support/standins.py: an OpenAI-compatible
`POST /v1/images/generations` answering `b64_json`): no real provider is called.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from handlers.images import IMAGE_BATCH, ImageBatchRequested, image_bytes, sniff
from handlers.provider import ProviderError
from queues import InvalidPayload, pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import job, visible_now
from tests.support.processes import sigkill, spawned, worker_process
from tests.support.standins import ImagesStandIn, images_server, tiny_png
from worker import Registry


@pytest.fixture
def images_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ImagesStandIn]:
    """The stand-in images API on 127.0.0.1 (tests/support/standins.py), and the settings that point at it."""
    with images_server() as api:
        for name, value in api.env.items():
            monkeypatch.setenv(name, value)
        yield api


def prepare(conn: psycopg.Connection[Any]) -> Registry:
    for queue in ("image_batch", "image_generate"):
        pgmq.ensure_queue(conn, queue)
    reg = Registry()
    for queue in ("image_batch", "image_generate"):
        reg.add(Registry.from_modules(["handlers"]).get(queue))
    return reg


def test_a_batch_with_slow_broken_and_rate_limited_images_succeeds_partially(
    conn: psycopg.Connection[Any], images_api: ImagesStandIn, burst_worker: BurstWorker
) -> None:
    """Five prompts: one times out (0.5 s per attempt), one keeps failing (HTTP 500), one is
    rate-limited once (429, a deferral, not an attempt), two are fine. The batch reports each
    image and "3 of 5 succeeded (1 failed, 1 timed out)"; the images are stored artifacts."""
    reg = prepare(conn)
    prompts = ["a calm lake", "a slow snail", "a broken vase", "a busy market", "a red kite"]
    payload = {
        "prompts": prompts,
        "per_image_timeout": 0.5,
        "max_attempts": 2,
        "max_running": 2,
        "min_success": 0.6,
    }
    msg_id = pgmq.send(conn, "image_batch", IMAGE_BATCH.parse(payload).model_dump())
    burst_worker(reg, timeout=60)

    row = job(conn, "image_batch", msg_id)
    assert row["status"] == "succeeded", row["error"]
    result = row["result"]
    assert result["summary"] == "3 of 5 succeeded (1 failed, 1 timed out)"
    by_prompt = {image["prompt"]: image for image in result["images"]}
    assert [(p, by_prompt[p]["status"], by_prompt[p]["attempts"]) for p in prompts] == [
        ("a calm lake", "succeeded", 1),
        ("a slow snail", "dead", 2),
        ("a broken vase", "dead", 2),
        ("a busy market", "succeeded", 1),  # the 429 was a deferral
        ("a red kite", "succeeded", 1),
    ]
    assert by_prompt["a slow snail"]["timed_out"] is True
    assert "HTTP 500" in by_prompt["a broken vase"]["error"]
    stored = conn.execute(
        "SELECT a.name, a.content_type, a.data FROM pgmq_worker.job_artifacts AS a"
        " JOIN pgmq_worker.jobs AS j ON j.id = a.job_id WHERE j.parent_id = %s ORDER BY a.name",
        (row["id"],),
    ).fetchall()
    assert [(name, ctype) for name, ctype, _ in stored] == [
        ("image-0.png", "image/png"),
        ("image-3.png", "image/png"),
        ("image-4.png", "image/png"),
    ]
    assert all(bytes(data).startswith(b"\x89PNG") for _, _, data in stored)
    assert by_prompt["a calm lake"]["url"].endswith("/artifacts/image-0.png")
    assert {r["auth"] for r in images_api.requests} == {"Bearer test-key"}
    assert {r["model"] for r in images_api.requests} == {"stand-in"}
    assert (row["progress"], row["step"]) == (100, "collect")


def test_a_worker_killed_mid_batch_resumes_without_planning_or_generating_again(
    db_url: str, conn: psycopg.Connection[Any], images_api: ImagesStandIn, tmp_path: Path
) -> None:
    """`pgmq-worker run` SIGKILLed while the second of three images is being generated (one at a
    time): the next worker neither re-plans nor re-spawns; only the interrupted image is asked
    again, and the batch ends 3 of 3.

    The killed child's message would reappear after its visibility timeout; the test makes it
    visible at once (its `vt` set to now) instead of waiting.
    """
    images_api.hold = threading.Event()
    prompts = ["a calm lake", "a pause in the rain", "a green hill"]
    for queue in ("image_batch", "image_generate"):
        pgmq.ensure_queue(conn, queue)
    msg_id = pgmq.send(conn, "image_batch", {"prompts": prompts, "max_running": 1})
    argv, env = worker_process(db_url, "handlers.images", **images_api.env)
    log = tmp_path / "first.log"
    with spawned(argv, env, log) as first:
        assert images_api.held.wait(30), log.read_text()[-3000:]
        parent = job(conn, "image_batch", msg_id)
        assert parent["progress"] > 0 and parent["step"] == "generate", parent
        sigkill(first)
    images_api.hold.set()
    visible_now(conn, "image_generate")

    second = subprocess.run(
        [*argv, "--burst"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 0, second.stderr[-3000:]
    row = job(conn, "image_batch", msg_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["result"]["summary"] == "3 of 3 succeeded", row["result"]
    assert [images_api.asked(p) for p in prompts] == [1, 2, 1]
    steps = conn.execute(
        "SELECT name, status, attempts FROM pgmq_worker.job_steps WHERE job_id = %s ORDER BY name",
        (row["id"],),
    ).fetchall()
    assert steps == [("generate", "done", 1), ("plan", "done", 1)], steps
    children = conn.execute(
        "SELECT count(*) FROM pgmq_worker.jobs WHERE parent_id = %s", (row["id"],)
    ).fetchone()
    assert children == (3,), children


def test_without_an_images_api_the_batch_says_it_skipped(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, burst_worker: BurstWorker
) -> None:
    """No PGMQ_WORKER_IMAGE_BASE_URL: the batch succeeds with the reason, and no child is sent."""
    monkeypatch.delenv("PGMQ_WORKER_IMAGE_BASE_URL", raising=False)
    reg = prepare(conn)
    msg_id = pgmq.send(conn, "image_batch", {"prompts": ["a fox"]})
    burst_worker(reg)
    row = job(conn, "image_batch", msg_id)
    assert row["status"] == "succeeded"
    assert row["result"]["skipped"] == "no image API configured: set PGMQ_WORKER_IMAGE_BASE_URL"
    assert row["result"]["images"] == []
    assert conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE parent_id IS NOT NULL").fetchone() == (
        0,
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"prompts": []},
        {"prompts": ["   "]},
        {"prompts": ["x"] * 51},
        {"prompts": ["x"], "size": "300x300"},
        {"prompts": ["x"], "min_success": 1.5},
        {"prompts": ["x"], "per_image_timeout": 0},
        {"prompts": ["x"], "colour": "red"},
    ],
)
def test_bad_batches_are_refused(payload: dict[str, Any]) -> None:
    """Empty or blank prompts, too many, an unknown size, bad policies, unknown fields."""
    with pytest.raises(InvalidPayload):
        IMAGE_BATCH.parse(payload)


def test_bad_provider_answers_are_named() -> None:
    """No data, bad base64, not an image: a ProviderError that says which."""

    async def check(answer: dict[str, Any]) -> str:
        async with httpx.AsyncClient() as client:
            with pytest.raises(ProviderError) as caught:
                await image_bytes(client, answer)
        return str(caught.value)

    assert "no data[0]" in asyncio.run(check({"data": []}))
    assert "not base64" in asyncio.run(check({"data": [{"b64_json": "***"}]}))
    assert "neither b64_json nor url" in asyncio.run(check({"data": [{}]}))
    with pytest.raises(ProviderError, match="not a PNG, JPEG or WebP"):
        sniff(b"GIF89a....")
    assert sniff(tiny_png((1, 2, 3))) == ("image/png", "png")
    assert ImageBatchRequested(prompts=["a", "a", "b"]).prompts == ["a", "a", "b"]
