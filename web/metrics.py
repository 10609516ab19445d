"""The web process's metrics: its own request counts and every queue's gauges, on a port of its own.

Set `PGMQ_WORKER_WEB_METRICS_PORT` and the web process serves `GET /metrics` there (from a
thread: queues.exporter), never on the app's own port, so the public app shows no internals
and nothing needs a credential. The series are `pgmq_worker_web_requests_total{method, route,
status}` (route: the matched path template, `/jobs/{job_id}`, never the raw path, so a job id is
no label) and the queue gauges the worker exports (queues.exporter.QueueGauges).

`with_metrics(app, ...)` wraps the app `python -m web` serves (web/__main__.py, the process's
edge) in a pure ASGI middleware counting requests, which also starts the endpoint on the app's
lifespan startup and stops it on shutdown.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.connect import Target
from queues.exporter import Exporter, QueueGauges, metrics_route
from web.settings import WebSettings


class RequestMetrics:
    """Counts each answered request; runs the metrics endpoint for the app's lifetime."""

    def __init__(
        self, app: ASGIApp, *, registry: CollectorRegistry, exporter: Exporter, gauges: QueueGauges
    ) -> None:
        self.app = app
        self._exporter = exporter
        self._gauges = gauges
        self._requests = Counter(
            "pgmq_worker_web_requests",
            "Requests the web process answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count HTTP requests; start and stop the endpoint with the lifespan."""
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self._requests.labels(scope["method"], template, str(status or 500)).inc()

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._exporter.start()
            elif message["type"] == "lifespan.shutdown":
                self._exporter.close()
                self._gauges.close()
            return message

        return wrapped


def with_metrics(app: ASGIApp, target: Target, settings: WebSettings) -> ASGIApp:
    """`app`, counting its requests and serving /metrics on `web_metrics_port` (as is when unset)."""
    if settings.web_metrics_port is None:
        return app
    registry = CollectorRegistry(auto_describe=False)
    gauges = QueueGauges(target, cache_s=settings.web_metrics_queue_cache.total_seconds())
    registry.register(gauges)
    routes = {"/metrics": metrics_route(registry)}
    exporter = Exporter(settings.web_metrics_host, settings.web_metrics_port, routes)
    return RequestMetrics(app, registry=registry, exporter=exporter, gauges=gauges)
