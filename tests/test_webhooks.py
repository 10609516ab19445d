"""Job webhooks: signed (Standard Webhooks), retried, never blocking the job, never to private addresses.

The receiver is a local HTTP server started by the test (a stand-in for the user's endpoint).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from db.connect import Target
from queues import InvalidPayload, enqueue, pgmq
from tests.helpers import captured, job, run_burst
from worker import Context, Registry, handler
from worker.webhooks import WebhookRefused, check_destination, sign

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-some-length").decode()


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    """The example from the Standard Webhooks specification signs to its published value."""
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://0.0.0.0/",
        "ftp://example.com/",
    ],
)
def test_private_and_odd_destinations_are_refused(url: str) -> None:
    """Loopback, private, link-local (cloud metadata), unspecified and non-http URLs are refused."""
    with pytest.raises(WebhookRefused):
        asyncio.run(check_destination(url, allow_private=False))


def test_public_addresses_pass_and_private_ones_can_be_allowed() -> None:
    """A public address passes; with allow_private a loopback one does too."""
    asyncio.run(check_destination("https://93.184.216.34/hook", allow_private=False))
    asyncio.run(check_destination("http://127.0.0.1:9/hook", allow_private=True))


@pytest.mark.parametrize("url", ["ftp://x/", "not a url", "http://", "https://" + "a" * 2000 + ".com/"])
def test_enqueue_refuses_bad_webhook_urls(conn: psycopg.Connection[Any], url: str) -> None:
    """A callback URL that is not http(s) with a host, or too long, is refused before anything is written."""
    pgmq.ensure_queue(conn, "hooked")
    with pytest.raises(InvalidPayload, match="webhook_url"):
        enqueue(conn, "hooked", {}, webhook_url=url)
    assert conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone() == (0,)


class Receiver(BaseHTTPRequestHandler):
    """Records each POST (headers and body); answers the status codes the server was told to."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers["content-length"]))
        time.sleep(server.delay_s)
        server.received.append((dict(self.headers), body))
        self.send_response(server.answers.pop(0) if server.answers else 200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.answers, server.delay_s = [], [], 0.0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Check a delivery as a receiver would (independently of worker.webhooks) and parse it."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], expected)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    return dict(json.loads(body))


def hooked_job(target: Target, conn: psycopg.Connection[Any], url: str, **settings: Any) -> Any:
    reg = Registry()

    @handler("hooked", registry=reg)
    async def hooked(payload: dict[str, Any], ctx: Context) -> dict[str, int]:
        return {"doubled": payload["n"] * 2}

    pgmq.ensure_queue(conn, "hooked")
    sent = enqueue(conn, "hooked", {"n": 21}, webhook_url=url)
    values = {"webhook_secret": SECRET, "webhook_allow_private": True} | settings
    run_burst(target, reg, **values)
    return sent


def test_status_changes_are_posted_signed(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """`running` then `succeeded` (with the result) arrive, each with a valid signature."""
    sent = hooked_job(target, conn, receiver.url)
    events = [verified(h, b) for h, b in receiver.received]
    assert [e["type"] for e in events] == ["job.running", "job.succeeded"]
    assert events[1]["data"] == {
        "id": str(sent.job_id),
        "queue": "hooked",
        "msg_id": sent.msg_id,
        "status": "succeeded",
        "attempt": 1,
        "result": {"doubled": 42},
    }
    assert len({h["webhook-id"] for h, _ in receiver.received}) == 2


def test_a_failing_endpoint_is_retried(target: Target, conn: psycopg.Connection[Any], receiver: Any) -> None:
    """503 then 200: the same delivery (same webhook-id) is sent again after a backoff."""
    receiver.answers = [503]
    hooked_job(target, conn, receiver.url)
    ids = [h["webhook-id"] for h, _ in receiver.received]
    # Both events went out at once; whichever got the 503 came again, with the same webhook-id.
    assert sorted(ids.count(i) for i in set(ids)) == [1, 2]
    assert {verified(h, b)["type"] for h, b in receiver.received} == {"job.running", "job.succeeded"}


def test_a_slow_endpoint_never_delays_the_job(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """The endpoint takes 2 s per call; the job is settled long before."""
    receiver.delay_s = 2.0
    sent = hooked_job(target, conn, receiver.url)
    row = job(conn, "hooked", sent.msg_id)
    assert row["status"] == "succeeded"
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 1.0


def test_a_private_destination_is_refused_by_default(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """By default the loopback receiver gets nothing (refused, logged); the job still succeeds."""
    with captured() as logs:
        sent = hooked_job(target, conn, receiver.url, webhook_allow_private=False)
    assert receiver.received == []
    assert any(e["event"] == "webhook.refused" for e in logs)
    assert job(conn, "hooked", sent.msg_id)["status"] == "succeeded"


def test_without_a_secret_nothing_is_sent(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """Unsigned deliveries are never sent: a warning says to set the secret."""
    with captured() as logs:
        hooked_job(target, conn, receiver.url, webhook_secret=None)
    assert receiver.received == []
    assert [e["event"] for e in logs].count("webhook.no_secret") == 1
