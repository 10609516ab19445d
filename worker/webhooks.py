"""Progress webhooks: POST a job's status changes to its callback URL, signed, never blocking it.

Deliveries follow the Standard Webhooks scheme: headers `webhook-id`, `webhook-timestamp` and
`webhook-signature` (worker.webhook_signing). A delivery is retried with backoff on connection
errors, timeouts, 429 and 5xx, in the background: the job never waits for it. Redirects are not
followed (a 3xx fails the delivery).

A user-supplied URL must not reach inside the network: a host that resolves to a private,
loopback, link-local (cloud metadata), reserved or multicast address is refused unless
PGMQ_WORKER_WEBHOOK_ALLOW_PRIVATE=true, and so is an IPv6 address that embeds such an IPv4
address (mapped, IPv4-compatible, NAT64, 6to4, Teredo). The name is resolved and checked on every
try, and the connection goes to the address that was checked (DNS rebinding cannot swap it).

Each event's delivery is recorded after each try (the `record` callable: worker.webhook_records
writes pgmq_worker.webhook_deliveries); recording that fails is logged, never raised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from db import storable
from db.backoff import Backoff
from db.errors import one_line
from db.logs import get_logger
from worker.outcome import Outcome
from worker.store.deliveries import Message
from worker.store.webhook_deliveries import Delivery, error_text
from worker.webhook_signing import secret_key, sign

log = get_logger()
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ADDRESSES = 3  # of a name's checked addresses, tried in turn within one try
MAX_ANSWER_BYTES = 2048  # of a non-2xx answer's body, read for the delivery's record

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # ::a.b.c.d (deprecated, RFC 4291)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: translated to the IPv4 in the low 32 bits
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a translator inside this network
# Not reachable on the public internet: the IANA special-purpose registries (globally reachable:
# false). ipaddress's is_global covers them on a current Python, but older patch releases miss some
# (3.11.7 calls 192.0.0.8 global), so they are spelled out; is_global is checked as well.
NON_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


class WebhookRefused(ValueError):
    """The URL may not be called (a private address, or not http(s))."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, IPv4-compatible, NAT64, 6to4, Teredo."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    found = [low32] if address in IPV4_COMPATIBLE or address in NAT64 else []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client): the client's bits are un-obfuscated for us
    return found


def is_public(address: IPAddress) -> bool:
    """Whether a connection to `address` stays on the public internet (IPv4 it embeds included)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the IPv4 address itself, spelled as IPv6
            return is_public(address.ipv4_mapped)
        if address in NAT64_LOCAL:
            return False
        if not all(is_public(inner) for inner in embedded_ipv4(address)):
            return False
    return address.is_global and not address.is_multicast and not any(address in n for n in NON_PUBLIC)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order of preference, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Destination:
    """A webhook URL and the addresses checked for it: the only ones its connection may go to."""

    url: httpx.URL
    pinned: tuple[httpx.URL, ...]  # the URL with each checked address for its host, in order

    def request(
        self, client: httpx.AsyncClient, pinned: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> httpx.Request:
        """A POST to one checked address, with the Host header and TLS server name of the URL's host."""
        # The URL names the IP, so nothing resolves the name again between the check and the
        # connect; the Host header and the sni_hostname extension keep the original name, and
        # httpcore verifies the certificate against that name (ssl's server_hostname).
        extensions = {"sni_hostname": self.url.raw_host.decode("ascii")} if self.url.scheme == "https" else {}
        headers = {**headers, "host": self.url.netloc.decode("ascii")}
        return client.build_request("POST", pinned, content=body, headers=headers, extensions=extensions)


async def check_destination(url: str, *, allow_private: bool, timeout_s: float = 10.0) -> Destination:
    """The addresses to connect to: WebhookRefused unless every one the host resolves to is public.

    A name that cannot be resolved (or not within `timeout_s`) raises httpx.ConnectError: a try
    that failed to connect, retried like one.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in {"http", "https"} or not parsed.raw_host:
        raise WebhookRefused(f"not an http(s) URL: {url!r}")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded: the name DNS and TLS see
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:  # getaddrinfo would wrap 99999 round to 34463
        raise WebhookRefused(f"port {port} is out of range")
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await resolve(host, port)
    except (OSError, TimeoutError, ValueError) as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {str(exc) or type(exc).__name__}") from exc
    if not addresses:
        raise httpx.ConnectError(f"{host!r} resolves to no address")
    if not allow_private:
        for address in addresses:  # every one: the connection must not pick another than was checked
            if not is_public(address):
                raise WebhookRefused(f"{host!r} resolves to a non-public address ({address})")
    try:  # the first few, tried in the resolver's order when one cannot be connected to
        pinned = tuple(parsed.copy_with(host=str(address)) for address in addresses[:MAX_ADDRESSES])
    except httpx.InvalidURL as exc:  # e.g. an IPv6 zone httpx will not spell
        raise WebhookRefused(f"cannot connect to {host!r}: {exc}") from None
    return Destination(parsed, pinned)


@dataclass(frozen=True, slots=True)
class Event:
    """One status change of one job."""

    url: str
    job_id: str
    status: str
    data: dict[str, Any]
    # When the status changed: the body's `timestamp`. Each event is delivered (and retried) on its
    # own, so a receiver may get a job's events out of order; this orders them.
    at: float = field(default_factory=time.time)

    @property
    def type(self) -> str:
        """The body's `type`: `job.<status>`."""
        return f"job.{self.status}"


# Told as each delivery ends: the event and `delivered`, `failed` (given up) or `refused`.
WebhookObserver = Callable[[Event, str], object]


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
        record: Callable[[Delivery], Awaitable[None]] | None = None,
    ) -> None:
        if secret is not None:
            secret_key(secret)  # a malformed secret fails here, at start, not inside each delivery
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
        self._observers: list[WebhookObserver] = []
        self._record = record

    def observe(self, observer: WebhookObserver) -> None:
        """Call `observer(event, result)` as each delivery ends: `delivered`, `failed` or `refused`.

        Like the settle's observers: quick, on the event loop, and one that raises is logged.
        """
        self._observers.append(observer)

    async def _ended(self, event: Event, delivery: Delivery, result: str) -> None:
        delivery.result = result
        for observer in self._observers:
            try:
                observer(event, result)
            except Exception:  # an observer's bug must not fail the delivery (its task would stop the worker)
                log.exception("webhook.observer_failed")
        await self._recorded(delivery)

    async def _recorded(self, delivery: Delivery) -> None:
        """Record the delivery as it stands; any failure (the database, a bug) is only logged."""
        if self._record is None:
            return
        try:
            await self._record(delivery)
        except Exception as exc:  # a delivery's task that raises would stop the worker
            log.warning("webhook.not_recorded", job_id=delivery.job_id, error=one_line(exc))

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
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        delivery = Delivery(msg_id, event.job_id, event.type, first_tried_at=now, last_tried_at=now)
        try:  # the one encoder: the result in the body reads as the job row holds it
            body = storable.dumps_bytes({"type": event.type, "timestamp": event.at, "data": event.data})
        except storable.Unstorable as exc:  # not expected: results and errors were checked before
            log.warning("webhook.refused", job_id=event.job_id, error=str(exc))
            delivery.error = error_text(str(exc))
            await self._ended(event, delivery, "refused")
            return
        for attempt in range(1, self.max_tries + 1):
            started, clock = datetime.now(UTC), time.monotonic()
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, msg_id, timestamp, body),
                "accept-encoding": "identity",  # an answer's start is read raw, never inflated
            }
            status, said = None, ""  # the answer's status and the start of its body
            try:
                # Resolved and checked on every try, and sent to the address that was checked: a
                # name that answered a public address first cannot point a retry at loopback.
                destination = await check_destination(
                    event.url, allow_private=self.allow_private, timeout_s=self.timeout_s
                )
                response = await self._post(destination, body, headers)
                status = response.status_code
                if status < 300:
                    await response.aclose()
                    delivery.tried(started, _ms_since(clock), status, None)
                    self.delivered += 1
                    await self._ended(event, delivery, "delivered")
                    return
                retry = status in RETRY_STATUSES
                why = f"HTTP {status}" + (" (redirects are not followed)" if response.is_redirect else "")
                said = await answer_start(response)  # for the row; the log keeps to the status
            except WebhookRefused as exc:
                log.warning("webhook.refused", job_id=event.job_id, tries=attempt, error=str(exc))
                delivery.tried(started, _ms_since(clock), None, str(exc))
                await self._ended(event, delivery, "refused")
                return
            except httpx.HTTPError as exc:
                retry, why = True, f"{type(exc).__name__}: {exc}"
            delivery.tried(started, _ms_since(clock), status, why + said)
            if not retry or attempt == self.max_tries:
                log.warning(
                    "webhook.failed", job_id=event.job_id, status=event.status, tries=attempt, error=why
                )
                await self._ended(event, delivery, "failed")
                return
            await self._recorded(delivery)  # pending: the page shows the retry coming
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _post(self, destination: Destination, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST to the checked addresses in turn until one connects (httpx alone would try them all).

        The answer is streamed: its body is not read (the caller reads its start, then closes it).
        """
        client = self._client or self._new_client()
        self._client = client
        *others, last = destination.pinned
        for pinned in others:
            try:
                return await client.send(destination.request(client, pinned, body, headers), stream=True)
            except httpx.ConnectError:
                continue
        return await client.send(destination.request(client, last, body, headers), stream=True)

    def _new_client(self) -> httpx.AsyncClient:
        # No keep-alive: the pool keys connections by origin, here the pinned IP, so a connection
        # opened (and its certificate verified) for one name could carry another name's request to
        # the same IP. No trust_env: a proxy from the environment would connect to some other
        # address than the one checked, and .netrc credentials are not ours to send; the CA bundle
        # from SSL_CERT_FILE / SSL_CERT_DIR is still honoured (create_ssl_context reads them).
        return httpx.AsyncClient(
            timeout=self.timeout_s,
            follow_redirects=False,  # a redirect could name any address; the receiver fixes its URL
            trust_env=False,
            verify=httpx.create_ssl_context(),
            limits=httpx.Limits(max_keepalive_connections=0),
        )


async def answer_start(response: httpx.Response) -> str:
    """`: ` and the start of a refused answer's body (at most MAX_ANSWER_BYTES read), closing it."""
    start = bytearray()
    try:
        async for chunk in response.aiter_raw():  # raw: a compressed answer is not inflated here
            start += chunk
            if len(start) >= MAX_ANSWER_BYTES:
                break
    except httpx.HTTPError:
        pass  # what arrived is enough to show
    finally:
        await response.aclose()
    text = bytes(start[:MAX_ANSWER_BYTES]).decode("utf-8", "replace").strip()  # any bytes at all
    return f": {text}" if text else ""


def _ms_since(clock: float) -> float:
    return (time.monotonic() - clock) * 1000


def started(message: Message) -> Event | None:
    """The `running` event of a delivery whose job has a webhook, else None."""
    if not message.webhook_url or message.job_id is None:
        return None
    return Event(message.webhook_url, str(message.job_id), "running", _data(message, "running"))


def settled(message: Message, outcome: Outcome) -> Event | None:
    """The event for a settled delivery, if its job has a webhook and the outcome is announced."""
    if not message.webhook_url or message.job_id is None or not outcome.announced:
        return None
    data = _data(message, outcome.status)
    data.update(outcome.webhook_fields())
    return Event(message.webhook_url, str(message.job_id), outcome.status, data)


def _data(message: Message, status: str) -> dict[str, Any]:
    return {
        "id": str(message.job_id),
        "queue": message.queue,
        "msg_id": message.msg_id,
        "status": status,
        "attempt": message.attempt,
    }
