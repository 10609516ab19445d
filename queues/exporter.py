"""The metrics endpoint both processes serve, and the queue gauges both export.

`Exporter` is a small HTTP server (the standard library's, one thread per request) running in
a thread of its own, not on the event loop: `/livez` must answer while the loop is blocked,
which is what it reports, and a scrape must never wait for the loop. It serves a fixed table of
GET routes; the worker adds `/livez` and `/readyz` to `/metrics`. It lives here, beside the
queue gauges, because the web process (which never imports the worker) serves it too.

`QueueGauges` is a Prometheus collector: on a scrape it reads every queue's depth
(queues.depths, one statement) on a connection of its own, at most once per `cache_s`, so a
queue nobody serves can still be scaled from zero. The same connection answers `ping()`.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from db.connect import Target, connect
from db.errors import one_line
from db.logs import get_logger
from db.pgmq_install import PgmqFeatures, detect
from queues.depths import queue_depths
from queues.pgmq import QueueMetrics

log = get_logger()

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Answer]
TEXT = "text/plain; charset=utf-8"
# A scrape or a probe waits at most this long for the connection another request is using.
CONNECTION_WAIT_S = 2.0
PING_CACHE_S = 1.0
NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})  # "::" on a machine without IPv6


def metrics_route(registry: CollectorRegistry) -> Route:
    """GET /metrics: the registry in the Prometheus text format 0.0.4 (Prometheus 2 and 3 read it)."""

    def answer() -> Answer:
        return 200, CONTENT_TYPE_PLAIN_0_0_4, generate_latest(registry)

    return answer


class _DualStackServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # "::" answers IPv4 too (Fly's 6PN is IPv6)
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _bind(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> _DualStackServer:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (_DualStackServer,), {"address_family": family})
    return server_class((host, port), handler)  # type: ignore[no-any-return]


class Exporter:
    """GET routes served from a thread: `start()` binds (an error if the port is taken), `close()` stops."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self.host = host
        self.requested_port = port
        self.routes = dict(routes)
        self._server: _DualStackServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one the system chose for 0)."""
        assert self._server is not None  # noqa: S101  only asked once started
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, TEXT, b"not found\n")
                    return
                try:
                    status, kind, body = route()
                except Exception as exc:  # a collector's bug: this scrape fails, the worker goes on
                    log.exception("metrics.route_failed", path=self.path, error=one_line(exc))
                    status, kind, body = 500, TEXT, b"internal error\n"
                self._send(status, kind, body)

            def do_POST(self) -> None:
                self._send(405, TEXT, b"method not allowed\n", allow=True)

            do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST  # only GET is served

            def _send(self, status: int, kind: str, body: bytes, *, allow: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if allow:
                    self.send_header("Allow", "GET")
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has no body
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not worth a log line

        try:
            self._server = _bind(self.host, self.requested_port, Handler)
        except OSError as exc:
            if self.host != "::" or exc.errno not in NO_IPV6:
                raise
            log.warning("metrics.no_ipv6", note="serving on 0.0.0.0 instead of ::")
            self.host = "0.0.0.0"  # noqa: S104  the IPv4 half of what "::" asked for
            self._server = _bind(self.host, self.requested_port, Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics.serving", host=self.host, port=self.port, paths=sorted(routes))

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None


class QueueGauges(Collector):
    """pgmq_worker_queue_messages / _queue_oldest_seconds / _dead_letters / _queue_paused for every queue."""

    def __init__(self, target: Target, *, cache_s: float) -> None:
        self._target = target
        self._cache_s = cache_s
        self._lock = threading.Lock()  # one request at a time on the connection
        self._conn: psycopg.Connection[Any] | None = None
        self._features: PgmqFeatures | None = None
        self._depths: list[QueueMetrics] = []
        self._read_at = float("-inf")
        self._pinged_at = float("-inf")
        self._answered = False

    def depths(self) -> list[QueueMetrics] | None:
        """Every queue's depth, at most `cache_s` old; None when the database did not answer."""
        if not self._lock.acquire(timeout=CONNECTION_WAIT_S):
            return None
        try:
            if time.monotonic() - self._read_at >= self._cache_s:
                found = self._use(queue_depths)
                if found is None:
                    return None
                self._depths, self._read_at = found, time.monotonic()
            return self._depths
        finally:
            self._lock.release()

    def ping(self) -> bool:
        """Whether the database answers (a `SELECT 1` at most every second)."""
        if not self._lock.acquire(timeout=CONNECTION_WAIT_S):
            return False  # another request is stuck on the connection: not answering
        try:
            if time.monotonic() - self._pinged_at >= PING_CACHE_S:
                self._answered = self._use(lambda conn, _features: conn.execute("SELECT 1")) is not None
                self._pinged_at = time.monotonic()
            return self._answered
        finally:
            self._lock.release()

    def collect(self) -> Iterator[Metric]:
        """The four queue gauges (none at all when the database did not answer this scrape)."""
        depths = self.depths()
        if depths is None:
            return
        messages = GaugeMetricFamily(
            "pgmq_worker_queue_messages",
            "Messages in each queue: visible (ready now) or invisible (leased or delayed).",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "pgmq_worker_queue_oldest_seconds",
            "Age of each queue's oldest message (0 when empty).",
            labels=["queue"],
        )
        dead = GaugeMetricFamily(
            "pgmq_worker_dead_letters", "Messages in each queue's dead-letter queue.", labels=["queue"]
        )
        paused = GaugeMetricFamily(
            "pgmq_worker_queue_paused",
            "1 while a queue is paused (no worker reads it), else 0.",
            labels=["queue"],
        )
        for q in depths:
            messages.add_metric([q.queue, "visible"], q.visible)
            messages.add_metric([q.queue, "invisible"], q.in_flight)
            oldest.add_metric([q.queue], q.oldest_age_s or 0)
            dead.add_metric([q.queue], q.dead)
            paused.add_metric([q.queue], int(q.paused))
        yield from (messages, oldest, dead, paused)

    def close(self) -> None:
        """Close the connection (after the exporter stopped)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _use(self, work: Callable[[psycopg.Connection[Any], PgmqFeatures], Any]) -> Any:
        """Run `work` on the connection (made when missing); None, and a new one next time, on failure."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._target)
                self._features = detect(self._conn)
            assert self._features is not None  # noqa: S101  detected with the connection
            result = work(self._conn, self._features)
        except Exception as exc:  # the database is away, or a queue was dropped mid-statement
            log.warning("metrics.database_failed", error=one_line(exc))
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None
        return True if result is None else result
