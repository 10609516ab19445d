"""`POST /jobs/{queue}`, the web process's hot path, answered on ASGI ahead of FastAPI's router.

`answer` is the route: the caller, the checked body (web/submit.py), the enqueue, the 202. The
route is declared in FastAPI (web/app.py) for the OpenAPI document and calls `answer`; the
`SubmitRoute` middleware, which sits inside the app's Guard (security headers, size caps, the
request log) and metrics but in front of FastAPI's whole stack (web/app.py's WebApp), calls
`answer` itself for a request it recognises and passes every other request on. FastAPI's
middleware, router, dependency solving and Response class took about a quarter of the web
process's CPU per enqueue under load (py-spy, docs/benchmarks.md), and none of them decides
anything for this route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from queues.enqueue import MAX_PAYLOAD_BYTES, Outgoing, aenqueue
from queues.errors import QueueError
from web.errors import DB_ERRORS, ApiError, database_error, from_queue_error
from web.submit import accepted, check

if TYPE_CHECKING:
    from web.app import Jobs

PREFIX = "/jobs/"
TEMPLATE = "/jobs/{queue}"  # the route's path in FastAPI, and the metrics' route label


@dataclass(frozen=True, slots=True)
class Request:
    """What the route reads of a request: the queue in its path, two headers, ?delay= and the body."""

    queue: str
    authorization: str | None
    idempotency_key: str | None
    delay: str | None
    body: bytes


async def answer(jobs: Jobs, request: Request) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Enqueue the body as a job: (202, its description, Location); ApiError for a client's mistake."""
    sub = check(
        jobs.catalog,
        request.queue,
        request.body,
        delay=request.delay,
        idempotency_key=request.idempotency_key,
        owner=jobs.auth.owner(request.authorization),
    )
    try:
        if sub.idempotency_key is None:  # concurrent requests share a statement (web/coalesce.py)
            send = Outgoing.of(
                sub.queue, sub.body, sub.delay, sub.owner, key=None, hook=None, catalog=jobs.catalog
            )
            sent = await jobs.coalescer.enqueue(send)
        else:
            async with jobs.pool.connection() as conn:
                sent = await aenqueue(
                    conn,
                    sub.queue,
                    sub.body,
                    delay=sub.delay,
                    owner=sub.owner,
                    idempotency_key=sub.idempotency_key,
                    catalog=jobs.catalog,
                )
    except QueueError as exc:
        raise from_queue_error(exc) from exc
    body, location = accepted(sent)
    return 202, body, {"Location": location}


async def read_body(receive: Receive) -> bytes | None:
    """The request body, read no further than one byte past the limit (check() answers 413).

    None when the client went away before sending all of it.
    """
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        data += message.get("body", b"")
        if len(data) > MAX_PAYLOAD_BYTES or not message.get("more_body", False):
            return bytes(data)


class SubmitRoute:
    """Answer `POST /jobs/{queue}` with `answer`; hand every other request to the app."""

    def __init__(self, app: ASGIApp, jobs: Jobs, route: Callable[[], Any]) -> None:
        self.app = app
        self.jobs = jobs
        self.route = route  # FastAPI's route object, looked up once the app has declared it
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the enqueue route, or pass the request on unchanged."""
        queue = _queue_of(scope)
        if queue is None:
            await self.app(scope, receive, send)
            return
        if self._route is None:
            self._route = self.route()
        scope["route"] = self._route  # what FastAPI's router would set: web/metrics.py labels by it
        raw = await read_body(receive)
        if raw is None:
            return
        headers = _headers(scope["headers"])
        delay = None
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            if name == "delay":
                delay = value  # the last one, as Starlette's query_params.get reads it
        request = Request(queue, headers.get("authorization"), headers.get("idempotency-key"), delay, raw)
        try:
            status, body, extra = await answer(self.jobs, request)
        except ApiError as exc:
            await JSONResponse(exc.body(), exc.status, headers=exc.headers)(scope, receive, send)
            return
        except DB_ERRORS as exc:
            await database_error(exc)(scope, receive, send)
            return
        content = orjson.dumps(body)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode("ascii")),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": content})


def _queue_of(scope: Scope) -> str | None:
    """The queue of a `POST /jobs/{queue}` request (a path segment, as FastAPI matches it), else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX) or len(path) == len(PREFIX) or "/" in path[len(PREFIX) :]:
        return None
    return path[len(PREFIX) :]


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The two headers the route reads, the first of each as Starlette's Headers.get returns it."""
    found: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in ("authorization", "idempotency-key") and key not in found:
            found[key] = value.decode("latin-1")
    return found
