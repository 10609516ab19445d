"""Progress webhooks: POST a job's status changes to its callback URL, signed, never blocking it.

Deliveries follow the Standard Webhooks scheme: headers `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
secret (`whsec_<base64>`, or any string, used as UTF-8). A delivery is retried with backoff on
connection errors, timeouts, 429 and 5xx, in the background: the job never waits for it.

A user-supplied URL must not reach inside the network: a host that resolves to a private,
loopback, link-local (cloud metadata), reserved or multicast address is refused unless
PGMQ_WORKER_WEBHOOK_ALLOW_PRIVATE=true.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from db.logs import get_logger
from queues.pgmq import Message
from worker.backoff import Backoff

log = get_logger()
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookRefused(ValueError):
    """The URL may not be called (a private address, or not http(s))."""


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after `whsec_` (Standard Webhooks), else the string's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def check_destination(url: str, *, allow_private: bool) -> None:
    """WebhookRefused unless every address the host resolves to is a public one (or allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise WebhookRefused(f"not an http(s) URL: {url!r}")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(f"{parts.hostname!r} resolves to a non-public address ({address})")


@dataclass(frozen=True, slots=True)
class Event:
    """One status change of one job."""

    url: str
    job_id: str
    status: str
    data: dict[str, Any]


class Webhooks:
    """A background sender: `send` returns at once; deliveries run and retry in their own tasks."""

    def __init__(
        self,
        secret: str | None,
        *,
        allow_private: bool = False,
        timeout_s: float = 10.0,
        max_tries: int = 5,
        backoff: Backoff | None = None,
        watch: Callable[[asyncio.Task[None]], object] | None = None,
    ) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.max_tries = max_tries
        self.backoff = backoff or Backoff(base=1.0, cap=60.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch = watch  # the worker's side-task supervision: a delivery that raises stops it
        self._client: httpx.AsyncClient | None = None
        self.delivered = 0
        self._warned = False

    def send(self, event: Event | None) -> None:
        """Deliver in the background (never awaited by the job); None: nothing to send."""
        if event is None:
            return
        if self.secret is None:
            if not self._warned:
                log.warning("webhook.no_secret", note="set PGMQ_WORKER_WEBHOOK_SECRET to send job webhooks")
                self._warned = True
            return
        task = asyncio.create_task(self._deliver(event, self.secret))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._watch is not None:
            self._watch(task)

    async def close(self, grace_s: float = 5.0) -> None:
        """Give deliveries in flight `grace_s` to finish, then drop them."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("webhook.dropped_on_shutdown", deliveries=len(pending))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, event: Event, secret: str) -> None:
        try:
            await check_destination(event.url, allow_private=self.allow_private)
        except WebhookRefused as exc:
            log.warning("webhook.refused", job_id=event.job_id, error=str(exc))
            return
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(
            {"type": f"job.{event.status}", "timestamp": time.time(), "data": event.data},
            separators=(",", ":"),
            default=str,
        ).encode()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        for attempt in range(1, self.max_tries + 1):
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, msg_id, timestamp, body),
            }
            try:
                response = await self._client.post(event.url, content=body, headers=headers)
                if response.status_code < 300:
                    self.delivered += 1
                    return
                retry = response.status_code in RETRY_STATUSES
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                retry, why = True, f"{type(exc).__name__}: {exc}"
            if not retry or attempt == self.max_tries:
                log.warning(
                    "webhook.failed", job_id=event.job_id, status=event.status, tries=attempt, error=why
                )
                return
            await asyncio.sleep(self.backoff.delay(attempt))


def started(message: Message) -> Event | None:
    """The `running` event of a delivery whose job has a webhook, else None."""
    if not message.webhook_url or message.job_id is None:
        return None
    return Event(message.webhook_url, str(message.job_id), "running", _data(message, "running"))


def settled(message: Message, outcome: Any) -> Event | None:
    """The event for a settled delivery (see worker.outcome), if its job has a webhook."""
    name = type(outcome).__name__
    if not message.webhook_url or message.job_id is None or name == "Waiting":
        return None  # a parent waiting for its children is still running: nothing to say
    status = {"Succeeded": "succeeded", "RetryLater": "failed", "DeadLetter": "dead"}.get(name, "queued")
    data = _data(message, status)
    if name == "Succeeded":
        data["result"] = outcome.result
    error = getattr(outcome, "error", None)
    if error is not None:
        data["error"] = {"type": error.type, "message": error.message}
    if name in {"RetryLater", "Deferred"}:
        data["retry_in_s"] = round(outcome.delay, 3)
    return Event(message.webhook_url, str(message.job_id), status, data)


def _data(message: Message, status: str) -> dict[str, Any]:
    return {
        "id": str(message.job_id),
        "queue": message.queue,
        "msg_id": message.msg_id,
        "status": status,
        "attempt": message.attempt,
    }
