"""HTTP 429 and Retry-After: a delayed retry that does not count as a failed attempt.

The provider is a local HTTP server started by the test (a stand-in for an LLM or image API).
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from db.connect import Target
from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import job, rows
from worker import Backoff, Context, RateLimited, Registry, handler
from worker.errors import MAX_RATE_LIMIT_DELAY_S, retry_after
from worker.store import deliveries, settles

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("999999", MAX_RATE_LIMIT_DELAY_S),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
    ],
)
def test_retry_after_values(header: str | None, expected: float | None) -> None:
    """Delta-seconds, HTTP dates, garbage and extremes."""
    assert retry_after(header) == expected


def test_retry_after_as_a_future_http_date() -> None:
    """An HTTP date 30 s ahead is about 30 s."""
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after(when)
    assert seconds is not None and 28 <= seconds <= 30


def test_rate_limited_deliveries_are_not_attempts(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Three 429s on a max_attempts=2 handler, then success: the job succeeds, every run is attempt 1."""
    seen: list[int] = []
    statuses: list[tuple[str, Any]] = []

    @handler("rl", registry=reg, backoff=FAST, max_attempts=2)
    async def rl(payload: dict[str, Any], ctx: Context) -> str:
        seen.append(ctx.attempt)
        if len(seen) > 1:
            row = job(conn, "rl", ctx.msg_id)
            statuses.append((row["status"], row["error"]["type"]))
        if len(seen) <= 3:
            raise RateLimited(0.1)
        return "done"

    pgmq.ensure_queue(conn, "rl")
    msg_id = pgmq.send(conn, "rl", {})
    burst_worker(reg)
    assert seen == [1, 1, 1, 1]
    row = job(conn, "rl", msg_id)
    assert (row["status"], row["result"], row["attempts"], row["deferrals"]) == ("succeeded", "done", 4, 3)
    # Each later delivery finds why the one before was deferred on the row (`queued` again: the
    # row says `running` once a delivery has run a moment, and these end at once).
    assert statuses == [("queued", "RateLimited")] * 3


def test_a_deferred_job_waits_as_queued(target: Target, conn: psycopg.Connection[Any]) -> None:
    """Deferring a delivery hides the message for the delay and puts the job back to `queued`."""
    pgmq.ensure_queue(conn, "wait")
    msg_id = pgmq.send(conn, "wait", {})

    async def go() -> bool:
        async with await psycopg.AsyncConnection.connect(target.url, autocommit=True) as aconn:
            [message] = await deliveries.read(aconn, "wait", 30, 1)
            return await settles.hide(
                aconn,
                message,
                60,
                "queued",
                error={"type": "RateLimited", "message": "HTTP 429"},
                deferral=True,
            )

    assert asyncio.run(go()) is True
    row = job(conn, "wait", msg_id)
    assert (row["status"], row["deferrals"], row["error"]["message"]) == ("queued", 1, "HTTP 429")
    [message] = rows(conn, "wait")
    assert message["visible"] is False and message["read_ct"] == 1


class Provider(BaseHTTPRequestHandler):
    """429 with Retry-After: 1 on the first call, 200 after; records when each call came."""

    def do_GET(self) -> None:
        calls = self.server.calls  # type: ignore[attr-defined]
        calls.append(time.monotonic())
        if len(calls) == 1:
            self.send_response(429)
            self.send_header("Retry-After", "1")
        else:
            self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[tuple[str, list[float]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    server.calls = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.calls  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_429_is_retried_after_its_retry_after(
    conn: psycopg.Connection[Any], provider: tuple[str, list[float]], reg: Registry, burst_worker: BurstWorker
) -> None:
    """RateLimited.from_response honours Retry-After: the second call comes a second later, as attempt 1."""
    url, calls = provider
    attempts: list[int] = []

    @handler("api", registry=reg, backoff=FAST, max_attempts=1)
    async def api(payload: dict[str, Any], ctx: Context) -> int:
        attempts.append(ctx.attempt)
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        if response.status_code == 429:
            raise RateLimited.from_response(response)
        return response.status_code

    pgmq.ensure_queue(conn, "api")
    msg_id = pgmq.send(conn, "api", {})
    burst_worker(reg)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.95
    assert attempts == [1, 1]
    assert job(conn, "api", msg_id)["status"] == "succeeded"
