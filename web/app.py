"""The FastAPI app: enqueue, job status, a Server-Sent Events stream per job, health and a page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from db.connect import Target, async_pool, connect
from db.errors import one_line
from db.logs import get_logger
from db.settings import DatabaseSettings
from queues import pgmq
from queues.artifacts import NAME as ARTIFACT_NAME
from queues.artifacts import Artifact, aget_artifact
from queues.catalog import Catalog
from queues.jobs import Job, aget_job, parse_job_id
from web.auth import Auth, Caller
from web.cancel import router as cancel_router
from web.coalesce import Coalescer
from web.dashboard import dashboard_router
from web.errors import DB_ERRORS, ApiError, artifact_not_found, database_error, job_not_found
from web.events import JobEvents
from web.openapi import PAYLOAD_BODY, TOKEN_PARAMETER, Accepted, JobView, QueueView, answers, document
from web.retry import router as retry_router
from web.security import Guard, docs_policy, page_policy
from web.settings import WebSettings
from web.submit_route import TEMPLATE, SubmitRoute, answer, read_body
from web.submit_route import Request as SubmitRequest

log = get_logger()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
# Artifact types a browser may show inline, matched exactly (parameters aside); anything else a
# handler stored is a download, so a stored text/html, SVG or `audio/x-html` can never run script
# on this origin, and no `text/plainx` or `application/json+xml` slips past a prefix.
INLINE_TYPES = frozenset(
    {
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/mpeg",
        "audio/ogg",
        "audio/webm",
        "audio/flac",
        "audio/aac",
        "audio/mp4",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "text/plain",
        "application/json",
    }
)
# Request handlers wait this long for a database connection, then answer 503 with Retry-After:
# the caller hears at once that it should retry, instead of after psycopg_pool's 30 s default
# while requests pile up behind it.
REQUEST_DB_TIMEOUT_S = 3.0


class Jobs:
    """What the routes share: the pool, the job-change listener, auth and the queue catalog."""

    def __init__(self, target: Target, settings: WebSettings, db: DatabaseSettings, catalog: Catalog) -> None:
        self.target = target
        self.settings = settings
        self.catalog = catalog
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        self.auth = Auth(secret, settings.jwt_audience, admin_token=admin)
        self.pool: AsyncConnectionPool = async_pool(
            target,
            min_size=min(1, db.pool_max_size),
            max_size=db.pool_max_size,
            check=True,
            timeout=REQUEST_DB_TIMEOUT_S,
        )
        self.events = JobEvents(target, self.pool, reconnect_max=db.connect_timeout)
        self.coalescer = Coalescer(self.pool)  # POST /jobs without an Idempotency-Key goes through it

    async def open(self) -> None:
        """Create the catalog's queues (as the worker would), open the pool, start listening."""
        await asyncio.to_thread(self._ensure_queues)
        await self.pool.open()
        await self.events.start()

    async def close(self) -> None:
        """Stop listening and close the pool."""
        await self.events.stop()
        await self.pool.close()

    def _ensure_queues(self) -> None:
        with connect(self.target) as conn:
            for spec in self.catalog:
                pgmq.ensure_queue(conn, spec.queue)

    async def visible_job(self, job_id: str, caller: Caller) -> Job:
        """The job, if it exists and the caller (its owner, an admin) may see it; else ApiError 404."""
        jid = parse_job_id(job_id)
        job = await self.load(jid) if jid is not None else None
        if job is None or not caller.may_see(job.owner, auth_enabled=self.auth.enabled):
            raise job_not_found(job_id)  # the same for both: another user's job is unknown
        return job

    async def visible_artifact(self, job_id: str, name: str, caller: Caller) -> Artifact:
        """A file of a job the caller may see; else ApiError 404, as for the job itself."""
        job = await self.visible_job(job_id, caller)
        if not ARTIFACT_NAME.fullmatch(name):  # no stored artifact has such a name (nor a NUL)
            raise artifact_not_found(job_id, name)
        async with self.pool.connection() as conn:
            found = await aget_artifact(conn, job.id, name)
        if found is None:
            raise artifact_not_found(job_id, name)
        return found

    async def load(self, job_id: UUID) -> Job | None:
        """Read one job row."""
        async with self.pool.connection() as conn:
            return await aget_job(conn, job_id)


class WebApp(FastAPI):
    """FastAPI behind the Guard and the enqueue route: `front` is what answers every request.

    `front` = Guard (security headers, size caps, the request log) around SubmitRoute (answers
    `POST /jobs/{queue}`) around FastAPI's own stack, so the enqueue path skips FastAPI's
    middleware and router (web/submit_route.py), and the Guard also sees the 500 that Starlette's
    ServerErrorMiddleware sends for an error no handler took.
    """

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve through `front`."""
        await self.front(scope, receive, send)


def create_app(
    target: Target,
    *,
    settings: WebSettings | None = None,
    db_settings: DatabaseSettings | None = None,
    catalog: Catalog | None = None,
) -> FastAPI:
    """The web app on `target`; the catalog (None: an empty one) says which queues take which payloads."""
    known = catalog if catalog is not None else Catalog()
    jobs = Jobs(target, settings or WebSettings(), db_settings or DatabaseSettings(), known)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await jobs.open()
        log.info("web.started", database=target.describe(), auth=jobs.auth.enabled)
        try:
            yield
        finally:
            await jobs.close()

    # The schema and Swagger UI are served only when asked for (web_docs), and then behind the
    # token like every endpoint: Swagger UI's script comes from a CDN onto this origin.
    app = WebApp(title="pgmq-worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs = jobs
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    app.front = Guard(SubmitRoute(partial(FastAPI.__call__, app), jobs=jobs, route=lambda: submit_route(app)))

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    async def db_error(_request: Request, exc: Exception) -> JSONResponse:
        return database_error(exc)

    for error in DB_ERRORS:
        app.add_exception_handler(error, db_error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.post(
        "/jobs/{queue}",
        status_code=202,
        responses=answers(202, "Accepted: the job is queued.", Accepted, 400, 401, 404, 413, 422, 503),
        openapi_extra=PAYLOAD_BODY,
    )
    async def submit(queue: str, request: Request) -> JSONResponse:
        """Enqueue the JSON body as a job on `queue`: 202 with the job id and its Location.

        SubmitRoute (web/submit_route.py) answers these requests ahead of the router, with the
        same `answer`: this declaration is the route's place in the OpenAPI document.
        """
        asked = SubmitRequest(
            queue,
            request.headers.get("authorization"),
            request.headers.get("idempotency-key"),
            request.query_params.get("delay"),
            await read_body(request.receive) or b"",
        )
        status, body, headers = await answer(jobs, asked)
        return JSONResponse(body, status, headers=headers)

    # response_model=None: the route returns Job.as_json() as is; JobView only describes it.
    @app.get(
        "/jobs/{job_id}", response_model=None, responses=answers(200, "The job.", JobView, 401, 404, 503)
    )
    async def show(job_id: str, request: Request) -> dict[str, Any]:
        """The job's status, progress, step, result or error."""
        caller = jobs.auth.caller(request.headers.get("authorization"))
        return (await jobs.visible_job(job_id, caller)).as_json()

    @app.get(
        "/jobs/{job_id}/events",
        responses=answers(
            200, "`text/event-stream`: one `data:` event per change, each a job.", None, 401, 404, 503
        ),
        openapi_extra=TOKEN_PARAMETER,
    )
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: the job's JSON on every change, until it has finished."""
        # EventSource cannot send headers, so the token may also come as ?access_token= (the
        # request log redacts it).
        caller = jobs.auth.caller(
            request.headers.get("authorization"), request.query_params.get("access_token")
        )
        job = await jobs.visible_job(job_id, caller)
        return StreamingResponse(
            _stream(jobs, job.id, caller), media_type="text/event-stream", headers=SSE_HEADERS
        )

    @app.get(
        "/jobs/{job_id}/artifacts/{name}",
        responses=answers(200, "The file, with its content type.", None, 401, 404, 503),
        openapi_extra=TOKEN_PARAMETER,
    )
    async def artifact(job_id: str, name: str, request: Request) -> Response:
        """A file the job stored (`ctx.artifact`), with its content type; 404 as for the job itself."""
        # <audio src> and <img src> cannot send headers, so the token may also come as ?access_token=.
        caller = jobs.auth.caller(
            request.headers.get("authorization"), request.query_params.get("access_token")
        )
        return artifact_response(await jobs.visible_artifact(job_id, name, caller))

    @app.get("/queues", response_model=None, responses=answers(200, "The queues.", list[QueueView], 401))
    async def queues(request: Request) -> list[dict[str, Any]]:
        """The queues this process accepts payloads for, with their JSON schema and an example."""
        jobs.auth.owner(request.headers.get("authorization"))
        return [spec.describe() for spec in jobs.catalog]

    app.include_router(retry_router)
    app.include_router(cancel_router)
    if jobs.settings.web_docs:
        _add_docs(app, jobs)

    _add_health_and_page(app, jobs)
    return app


def _add_health_and_page(app: FastAPI, jobs: Jobs) -> None:
    """/healthz and the page, the two answers that need no token, and the dashboard (its own gate)."""
    app.include_router(dashboard_router(jobs))

    @app.get(
        "/healthz",
        responses={
            200: {"description": '`{"status": "ok", "listening": ..., "streams": ...}`'},
            503: {"description": '`{"status": "unavailable", "error": ...}`: the database does not answer'},
        },
    )
    async def healthz() -> JSONResponse:
        """200 when the database answers, else 503."""
        try:
            async with jobs.pool.connection(timeout=3) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # any failure to reach the database is "unhealthy"
            body = {"status": "unavailable", "error": one_line(exc)}
            return JSONResponse(body, 503)
        return JSONResponse(
            {"status": "ok", "listening": jobs.events.listening, "streams": jobs.events.streams}
        )

    html = resources.files("web").joinpath("static/index.html").read_text(encoding="utf-8")
    page_headers = {"Content-Security-Policy": page_policy(html)}

    @app.get("/", response_class=HTMLResponse, responses={200: {"description": "The progress page (HTML)."}})
    async def page() -> Response:
        """The progress page."""
        return HTMLResponse(html, headers=page_headers)


def _add_docs(app: FastAPI, jobs: Jobs) -> None:
    """/openapi.json and Swagger UI at /docs, each behind the token like every endpoint."""

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        jobs.auth.owner(request.headers.get("authorization"))
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        jobs.auth.owner(request.headers.get("authorization"))
        html = get_swagger_ui_html(openapi_url="openapi.json", title="pgmq-worker API")
        return _with_docs_policy(html)


def _with_docs_policy(page: HTMLResponse) -> HTMLResponse:
    """Swagger UI's page with a CSP that lets it load its CDN files and run its one inline script."""
    page.headers["Content-Security-Policy"] = docs_policy(bytes(page.body).decode())
    return page


def artifact_response(artifact: Artifact) -> Response:
    """The file with its content type (inline only for INLINE_TYPES), cacheable by the caller only."""
    inline = artifact.content_type.partition(";")[0].strip() in INLINE_TYPES
    headers = {
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{artifact.name}"',
    }
    media_type = artifact.content_type if inline else "application/octet-stream"
    return Response(artifact.data, media_type=media_type, headers=headers)


def submit_route(app: FastAPI) -> Any:
    """The app's `POST /jobs/{queue}` route object (the metrics label it by its path)."""
    return next(
        r for r in app.routes if getattr(r, "path", None) == TEMPLATE and "POST" in getattr(r, "methods", ())
    )


# The stream is framed by hand rather than with sse-starlette: every event is one `id:` line
# and one `data:` line of compact JSON (json.dumps escapes newlines, so no multi-line splitting
# is ever needed) or a comment; the keepalive is also this loop's re-read timer, which a separate
# ping task would duplicate; and ending at the token's expiry is one more deadline in this loop.
# Starlette's StreamingResponse already cancels the generator when the client leaves, and
# uvicorn's timeout_graceful_shutdown (web/__main__.py) cuts open streams on a stop.
REAUTH_EVENT = 'event: reauth\ndata: {"reason":"token_expired"}\n\n'


async def _stream(jobs: Jobs, job_id: UUID, caller: Caller) -> AsyncIterator[str]:
    """One `data:` event per distinct state of the job, comments to keep the connection alive.

    The stream ends when the job has finished, and when the caller's token expires: then with a
    `reauth` event, so the client reconnects with a fresh token (a job delayed for days must not
    keep a stream authorised by a token that expired long ago).
    """
    keepalive = jobs.settings.sse_keepalive.total_seconds()
    poll = jobs.settings.sse_poll_interval.total_seconds()
    try:
        async with jobs.events.subscribe(job_id) as changed:
            job = await jobs.load(job_id)  # after subscribing: no change can slip between the two
            last: dict[str, Any] | None = None
            sent_at = time.monotonic()
            seq = 0
            while job is not None:
                data = job.as_json()
                if data != last:
                    seq += 1
                    yield f"id: {seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                    last, sent_at = data, time.monotonic()
                if job.finished:
                    return
                wait = keepalive if jobs.events.listening else min(poll, keepalive)
                if caller.expires_at is not None:
                    left = caller.expires_at - time.time()
                    if left <= 0:
                        log.info("sse.token_expired", job_id=str(job_id))
                        yield REAUTH_EVENT
                        return
                    wait = min(wait, left)
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except TimeoutError:
                    if time.monotonic() - sent_at >= keepalive:
                        yield ": keepalive\n\n"
                        sent_at = time.monotonic()
                changed.clear()
                job = await jobs.load(job_id)
    except DB_ERRORS as exc:  # the headers are sent: end the stream; the client reconnects
        log.warning("sse.database_unavailable", job_id=str(job_id), error=type(exc).__name__)
