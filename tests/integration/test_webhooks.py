"""Job webhooks: signed (Standard Webhooks), retried, never blocking the job, never to private addresses.

The receiver is a local HTTP server started by the test (a stand-in for the user's endpoint).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import psycopg
import pydantic
import pytest
import standardwebhooks
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from db.backoff import Backoff
from db.connect import Target
from queues import InvalidPayload, enqueue, pgmq
from tests.support.helpers import captured, job, run_burst
from worker import Context, Registry, handler
from worker import webhooks as webhooks_module
from worker.cli import main
from worker.settings import WorkerSettings
from worker.webhooks import Event, WebhookRefused, Webhooks, check_destination, sign

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
    """Records each POST (headers and body); answers the status codes the server was told to,
    with `answer_body` as the body of each answer that is not a 2xx."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers["content-length"]))
        time.sleep(server.delay_s)
        server.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        code = server.answers.pop(0) if server.answers else 200
        said = server.answer_body if code >= 300 else b""
        self.send_response(code)
        if server.location:
            self.send_header("location", server.location)
        self.send_header("content-length", str(len(said)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the worker reads an answer's start, then hangs up
            self.wfile.write(said)

    def log_message(self, *_args: Any) -> None:
        pass


def serve(tls: ssl.SSLContext | None = None) -> Any:
    """A Receiver on 127.0.0.1 (an ephemeral port), in a thread; stop it with `server.shutdown()`."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.received, server.answers, server.delay_s, server.location = [], [], 0.0, None
    server.answer_body = b""
    server.port = server.server_address[1]
    server.url = f"http://127.0.0.1:{server.port}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receiver() -> Iterator[Any]:
    server = serve()
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
    """`running` and `succeeded` (with the result) arrive, each with a valid signature. Each event
    is delivered on its own, so they may arrive in either order; their timestamps keep it."""
    sent = hooked_job(target, conn, receiver.url)
    events = sorted((verified(h, b) for h, b in receiver.received), key=lambda e: e["timestamp"])
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


# --- Checked against the reference implementation (standardwebhooks, the spec's Python library) ---


def test_real_deliveries_verify_with_the_standard_webhooks_package(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """What the receiver got verifies with standardwebhooks; a tampered body or an old timestamp does not."""
    hooked_job(target, conn, receiver.url)
    reference = standardwebhooks.Webhook(SECRET)
    assert len(receiver.received) == 2
    for headers, body in receiver.received:
        assert reference.verify(body, headers)["type"] in {"job.running", "job.succeeded"}
        with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching signature"):
            reference.verify(body.replace(b'"attempt":1', b'"attempt":2'), headers)
        old = str(int(headers["webhook-timestamp"]) - 600)
        with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
            reference.verify(body, headers | {"webhook-timestamp": old})
    # Signed 10 minutes ago with our own signer: the reference refuses it on the timestamp alone.
    stale = int(time.time()) - 600
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stale)}
    headers["webhook-signature"] = sign(SECRET, "msg_1", stale, b"{}")
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        reference.verify(b"{}", headers)


def test_an_unpadded_whsec_secret_signs_as_the_reference_reads_it(
    target: Target, conn: psycopg.Connection[Any], receiver: Any
) -> None:
    """`whsec_` base64 without its `=` padding (the reference accepts it): delivered and verifiable."""
    unpadded = SECRET.rstrip("=")
    assert unpadded != SECRET
    hooked_job(target, conn, receiver.url, webhook_secret=unpadded)
    assert len(receiver.received) == 2
    for headers, body in receiver.received:
        standardwebhooks.Webhook(unpadded).verify(body, headers)


@pytest.mark.parametrize(
    "secret",
    [
        "correct horse battery staple and more",  # a password: receivers would base64-decode it
        "c2hvcnQ=",  # base64 without the prefix
        "whsec_" + base64.b64encode(b"short").decode(),  # 5 bytes: the specification asks for 24 or more
        "whsec_not base64 at all!!",
        "whsec_",
    ],
)
def test_secrets_the_receivers_would_read_differently_are_refused_at_start(secret: str) -> None:
    """A secret that is not `whsec_<base64 of 24+ bytes>` is refused by the settings, without echoing it."""
    with pytest.raises(pydantic.ValidationError, match="whsec_") as refused:
        WorkerSettings(webhook_secret=secret)
    if len(secret) > len("whsec_"):
        assert secret not in str(refused.value)


def test_the_worker_will_not_start_with_a_plain_password_as_secret(db_url: str) -> None:
    """`pgmq-worker run` with a non-whsec_ secret: a one-line error naming the setting, not the secret."""
    env = {"DATABASE_URL": db_url, "PGMQ_WORKER_WEBHOOK_SECRET": "hunter2-but-longer-and-secret"}
    result = CliRunner().invoke(main, ["run", "--burst"], env=env)
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert "invalid setting" in error
    assert "webhook_secret" in error
    assert "whsec_" in error
    assert "hunter2" not in result.output


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(max_size=80).map(lambda key: "whsec_" + base64.b64encode(key).decode()),
        st.binary(max_size=80).map(lambda key: "whsec_" + base64.b64encode(key).decode().rstrip("=")),
    )
)
def test_every_secret_is_refused_or_signs_as_the_reference_does(secret: str) -> None:
    """Any string: refused at start, or our signature is the one standardwebhooks computes with it."""
    try:
        WorkerSettings(webhook_secret=secret)
    except pydantic.ValidationError:
        return
    expected = standardwebhooks.Webhook(secret).sign(
        "msg_x", datetime.fromtimestamp(1700000000, UTC), '{"a":1}'
    )
    assert sign(secret, "msg_x", 1700000000, b'{"a":1}') == expected


# --- The address check: DNS rebinding, IPv4 inside IPv6 ---

PUBLIC = "93.184.216.34"  # never connected to: the test's outside network refuses every connection


@pytest.fixture
def no_outside_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Connections to anything but loopback fail as unreachable (recorded): this machine has no outside."""
    attempted: list[str] = []
    real = asyncio.base_events.BaseEventLoop.create_connection

    async def loopback_only(self: Any, factory: Any, host: Any = None, port: Any = None, **kw: Any) -> Any:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            attempted.append(str(host))
            raise OSError(errno.ENETUNREACH, "no outside network in tests")
        return await real(self, factory, host, port, **kw)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", loopback_only)
    return attempted


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, answers: Callable[[int], list[str]]) -> list[str]:
    """socket.getaddrinfo answers `answers(n)` for the n-th (0-based) query of `name`; real for the rest."""
    queries: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked = host.decode() if isinstance(host, bytes) else host
        if asked != name:
            return real(host, port, *args, **kwargs)
        addresses = answers(len(queries))
        queries.append(asked)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return queries


def deliver(url: str, *, allow_private: bool = False, max_tries: int = 3) -> list[dict[str, Any]]:
    """One event through a Webhooks sender (fast backoff), waited for; the log events."""

    async def go() -> None:
        hooks = Webhooks(
            SECRET, allow_private=allow_private, max_tries=max_tries, backoff=Backoff(0.05, cap=0.05)
        )
        hooks.send(Event(url, "job-1", "running", {"id": "job-1"}))
        await hooks.close(grace_s=20)

    with captured() as logs:
        asyncio.run(go())
    return logs


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.builds("{}://{}/{}".format, st.sampled_from(["http", "https", "HTTP", ""]), st.text(), st.text()),
    )
)
def test_any_url_is_pinned_or_refused_never_a_surprise(url: str) -> None:
    """Whatever the URL: a Destination pinned to a checked address, WebhookRefused, or a ConnectError."""

    async def public(_host: str, _port: int) -> list[Any]:
        return [ipaddress.ip_address(PUBLIC)]  # DNS is outside: every name answers one public address

    with patch.object(webhooks_module, "resolve", public):
        try:
            destination = asyncio.run(check_destination(url, allow_private=False))
        except (WebhookRefused, httpx.ConnectError):
            return
    assert destination.url.scheme in {"http", "https"}
    [pinned] = destination.pinned
    request = destination.request(httpx.AsyncClient(), pinned, b"{}", {"webhook-id": "msg_1"})
    assert request.url.host == PUBLIC
    assert request.headers["host"] == destination.url.netloc.decode()


def test_a_name_that_rebinds_to_loopback_never_gets_the_body(
    monkeypatch: pytest.MonkeyPatch, receiver: Any, no_outside_network: list[str]
) -> None:
    """DNS answers a public address for the check, then 127.0.0.1: no try reaches the loopback server."""
    queries = fake_dns(monkeypatch, "rebind.example", lambda n: [PUBLIC] if n == 0 else ["127.0.0.1"])
    logs = deliver(f"http://rebind.example:{receiver.port}/hook")
    assert receiver.received == []
    assert no_outside_network == [PUBLIC]  # the first try went to the address that was checked
    assert len(queries) == 2  # the second try resolved again, and that answer was checked too
    refused = [e for e in logs if e["event"] == "webhook.refused"]
    assert len(refused) == 1
    assert "127.0.0.1" in refused[0]["error"]


def test_every_address_a_name_resolves_to_is_checked(
    monkeypatch: pytest.MonkeyPatch, receiver: Any, no_outside_network: list[str]
) -> None:
    """A name with a public and a loopback address is refused before any connection."""
    fake_dns(monkeypatch, "both.example", lambda _n: [PUBLIC, "127.0.0.1"])
    logs = deliver(f"http://both.example:{receiver.port}/hook")
    assert receiver.received == []
    assert no_outside_network == []
    assert [e["event"] for e in logs] == ["webhook.refused"]


def test_a_pinned_delivery_keeps_the_host_header(monkeypatch: pytest.MonkeyPatch, receiver: Any) -> None:
    """Allowed destinations still work: the connection goes to the checked IP, Host names the URL's host."""
    fake_dns(monkeypatch, "hooks.internal", lambda _n: ["127.0.0.1"])
    logs = deliver(f"http://hooks.internal:{receiver.port}/hook", allow_private=True)
    assert logs == []
    [(headers, body)] = receiver.received
    assert headers["host"] == f"hooks.internal:{receiver.port}"
    standardwebhooks.Webhook(SECRET).verify(body, headers)


def test_the_next_checked_address_is_tried_when_one_refuses(
    monkeypatch: pytest.MonkeyPatch, receiver: Any
) -> None:
    """A name whose first address refuses connections is delivered through the next, as httpx would."""
    fake_dns(monkeypatch, "two.internal", lambda _n: ["127.0.0.2", "127.0.0.1"])  # nothing listens on .2
    logs = deliver(f"http://two.internal:{receiver.port}/hook", allow_private=True, max_tries=1)
    assert logs == []
    assert len(receiver.received) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (and key, in the same folder) for the name `hooks.test`."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "1",
         "-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


@pytest.mark.parametrize("name", ["hooks.test", "other.test"])
def test_https_to_the_pinned_address_verifies_the_original_name(
    monkeypatch: pytest.MonkeyPatch, certificate: Path, name: str
) -> None:
    """Over TLS the server name (SNI) and the certificate check are the URL's host, not the pinned IP."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    names: list[str | None] = []
    tls.sni_callback = lambda _sock, server_name, _ctx: names.append(server_name)
    server = serve(tls)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate / "cert.pem"))  # trust the test's certificate
    fake_dns(monkeypatch, name, lambda _n: ["127.0.0.1"])
    try:
        logs = deliver(f"https://{name}:{server.port}/hook", allow_private=True, max_tries=1)
    finally:
        server.shutdown()
        server.server_close()
    assert names == [name]
    if name == "hooks.test":
        assert logs == []
        [(headers, _body)] = server.received
        assert headers["host"] == f"hooks.test:{server.port}"
    else:  # the certificate is for hooks.test: refused though the pinned IP is the same server
        assert server.received == []
        [failed] = logs
        assert failed["event"] == "webhook.failed"
        assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]


def test_redirects_are_not_followed(receiver: Any) -> None:
    """A 3xx fails the delivery (not retried): its Location, which could name any address, gets nothing."""
    other = serve()
    try:
        receiver.answers, receiver.location = [307], other.url
        logs = deliver(receiver.url, allow_private=True)
    finally:
        other.shutdown()
        other.server_close()
    assert len(receiver.received) == 1
    assert other.received == []
    [failed] = logs
    assert failed["event"] == "webhook.failed"
    assert failed["tries"] == 1
    assert "redirects are not followed" in failed["error"]


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the cloud metadata service
        "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215): translated inside this network
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(address: str) -> None:
    """An IPv6 address that embeds a loopback, private or link-local IPv4 address is refused."""
    with pytest.raises(WebhookRefused, match="non-public"):
        asyncio.run(check_destination(f"http://[{address}]/hook", allow_private=False))


NON_PUBLIC_V4 = [
    ipaddress.IPv4Network(n)
    for n in [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    ]
]  # fmt: skip
non_public_v4 = st.sampled_from(NON_PUBLIC_V4).flatmap(lambda net: st.ip_addresses(network=net))
public_v4 = st.ip_addresses(v=4).filter(
    lambda a: not any(a in net for net in NON_PUBLIC_V4) and a.is_global and not a.is_multicast
)


def spellings(v4: ipaddress.IPv4Address, rest: int) -> dict[str, ipaddress.IPv6Address]:
    """Each IPv6 form that carries `v4` (rest: bits for the parts the form leaves free)."""
    n = int(v4)
    return {
        "mapped": ipaddress.IPv6Address(0xFFFF << 32 | n),
        "compatible": ipaddress.IPv6Address(n),
        "nat64": ipaddress.IPv6Address(0x64FF9B << 96 | n),
        "6to4": ipaddress.IPv6Address(0x2002 << 112 | n << 80 | rest & (1 << 80) - 1),
        "teredo client": ipaddress.IPv6Address(
            0x20010000 << 96 | (rest & (1 << 64) - 1) << 32 | n ^ 0xFFFFFFFF
        ),
        "teredo server": ipaddress.IPv6Address(0x20010000 << 96 | n << 64 | rest & (1 << 64) - 1),
    }


def verdict(address: ipaddress.IPv6Address) -> bool:
    """Whether check_destination lets the literal address through."""
    try:
        asyncio.run(check_destination(f"http://[{address}]/", allow_private=False))
    except WebhookRefused:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(non_public_v4, st.integers(min_value=0, max_value=(1 << 80) - 1))
def test_every_ipv6_spelling_of_a_non_public_ipv4_address_is_refused(v4: Any, rest: int) -> None:
    """Loopback, private, link-local, reserved, multicast IPv4: refused in every IPv6 form that carries it."""
    allowed = {form for form, address in spellings(v4, rest).items() if verdict(address)}
    assert allowed == set()


@settings(max_examples=150, deadline=None)
@given(public_v4, st.integers(min_value=0, max_value=(1 << 80) - 1))
def test_ipv6_spellings_of_a_public_ipv4_address_pass(v4: Any, rest: int) -> None:
    """A public IPv4 address passes mapped, compatible, NAT64 and 6to4 (Teredo, 2001::/32, is not global)."""
    forms = spellings(v4, rest)
    assert {form for form, address in forms.items() if verdict(address)} == {
        "mapped",
        "compatible",
        "nat64",
        "6to4",
    }
    assert webhooks_module.is_public(v4)
