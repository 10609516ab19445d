"""The image batch pipeline: fan-out to an images API with per-image timeouts and partial success.

The images API is a local HTTP server started by these tests (an OpenAI-compatible
`POST /v1/images/generations` answering `b64_json`): no real provider is called.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from handlers.images import IMAGE_BATCH, ImageBatchRequested, image_bytes, sniff
from handlers.provider import ProviderError
from queues import InvalidPayload, pgmq
from tests.helpers import job, run_burst
from worker import Registry, registry


def tiny_png(rgb: tuple[int, int, int]) -> bytes:
    """A real 1x1 PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes(rgb))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


class ImagesApi:
    """The stand-in provider: prompts containing `slow`, `broken` or `busy` misbehave."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.busy_once = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                prompt = body["prompt"]
                if "slow" in prompt:
                    time.sleep(2)
                if "broken" in prompt:
                    return self._answer(500, {"error": {"message": "model overloaded"}})
                if "busy" in prompt and api.busy_once:
                    api.busy_once = False
                    return self._answer(429, {"error": {"message": "slow down"}}, retry_after="0")
                image = base64.b64encode(tiny_png((len(prompt) % 256, 80, 160))).decode()
                return self._answer(200, {"created": 0, "data": [{"b64_json": image}]})

            def _answer(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def images_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ImagesApi]:
    api = ImagesApi()
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PGMQ_WORKER_IMAGE_BASE_URL", api.url)
    monkeypatch.setenv("PGMQ_WORKER_IMAGE_API_KEY", "test-key")
    monkeypatch.setenv("PGMQ_WORKER_IMAGE_MODEL", "stand-in")
    yield api
    api.server.shutdown()
    api.server.server_close()


def prepare(conn: psycopg.Connection[Any]) -> Registry:
    for queue in ("image_batch", "image_generate"):
        pgmq.ensure_queue(conn, queue)
    reg = Registry()
    for queue in ("image_batch", "image_generate"):
        reg.add(registry.get(queue))
    return reg


def test_a_batch_with_slow_broken_and_rate_limited_images_succeeds_partially(
    target: Any, conn: psycopg.Connection[Any], images_api: ImagesApi
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
    run_burst(target, reg, timeout=60)

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


def test_without_an_images_api_the_batch_says_it_skipped(
    target: Any, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PGMQ_WORKER_IMAGE_BASE_URL: the batch succeeds with the reason, and no child is sent."""
    monkeypatch.delenv("PGMQ_WORKER_IMAGE_BASE_URL", raising=False)
    reg = prepare(conn)
    msg_id = pgmq.send(conn, "image_batch", {"prompts": ["a fox"]})
    run_burst(target, reg)
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
