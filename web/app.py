"""The FastAPI app: enqueue, job status, a Server-Sent Events stream per job, health and a page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.connect import Target, async_pool, connect
from db.logs import get_logger
from db.settings import DatabaseSettings
from queues import pgmq
from queues.artifacts import Artifact, aget_artifact
from queues.catalog import Catalog
from queues.catalog import catalog as default_catalog
from queues.enqueue import MAX_PAYLOAD_BYTES, aenqueue
from queues.errors import QueueError
from queues.jobs import Job, aget_job, parse_job_id
from web.auth import Auth
from web.errors import ApiError, artifact_not_found, from_queue_error, job_not_found
from web.events import JobEvents
from web.settings import WebSettings
from web.submit import accepted, check

log = get_logger()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
# Artifact types a browser may show inline; anything else a handler stored is a download, so a
# stored text/html or SVG can never run script on this origin.
INLINE_TYPES = (
    "audio/",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "application/json",
)


class Jobs:
    """What the routes share: the pool, the job-change listener, auth and the queue catalog."""

    def __init__(self, target: Target, settings: WebSettings, db: DatabaseSettings, catalog: Catalog) -> None:
        self.target = target
        self.settings = settings
        self.catalog = catalog
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.auth = Auth(secret, settings.jwt_audience)
        self.pool: AsyncConnectionPool = async_pool(
            target, min_size=min(1, db.pool_max_size), max_size=db.pool_max_size, check=True
        )
        self.events = JobEvents(target, self.pool, reconnect_max=db.connect_timeout.total_seconds())

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

    async def visible_job(self, job_id: str, owner: UUID | None) -> Job:
        """The job, if it exists and the caller may see it; else ApiError 404 (the same for both)."""
        jid = parse_job_id(job_id)
        job = await self.load(jid) if jid is not None else None
        if job is None or (self.auth.enabled and job.owner != owner):
            raise job_not_found(job_id)
        return job

    async def visible_artifact(self, job_id: str, name: str, owner: UUID | None) -> Artifact:
        """A file of a job the caller may see; else ApiError 404, as for the job itself."""
        job = await self.visible_job(job_id, owner)
        async with self.pool.connection() as conn:
            found = await aget_artifact(conn, job.id, name)
        if found is None:
            raise artifact_not_found(job_id, name)
        return found

    async def load(self, job_id: UUID) -> Job | None:
        """Read one job row."""
        async with self.pool.connection() as conn:
            return await aget_job(conn, job_id)


def create_app(
    target: Target,
    *,
    settings: WebSettings | None = None,
    db_settings: DatabaseSettings | None = None,
    catalog: Catalog = default_catalog,
) -> FastAPI:
    """The web app on `target`; the catalog decides which queues accept which payloads."""
    jobs = Jobs(target, settings or WebSettings(), db_settings or DatabaseSettings(), catalog)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await jobs.open()
        log.info("web.started", database=target.describe(), auth=jobs.auth.enabled)
        try:
            yield
        finally:
            await jobs.close()

    app = FastAPI(title="pgmq-worker", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.jobs = jobs

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.post("/jobs/{queue}", status_code=202)
    async def submit(queue: str, request: Request) -> JSONResponse:
        """Enqueue the JSON body as a job on `queue`: 202 with the job id and its Location."""
        owner = jobs.auth.owner(request.headers.get("authorization"))
        key = request.headers.get("idempotency-key")
        sub = check(
            jobs.catalog,
            queue,
            await _body(request),
            delay=request.query_params.get("delay"),
            idempotency_key=key,
        )
        # Keys are per caller: another user's key must never hand back their job.
        scoped = None if key is None else (f"{owner}:{key}" if owner is not None else key)
        try:
            async with jobs.pool.connection() as conn:
                sent = await aenqueue(
                    conn, sub.queue, sub.body, delay=sub.delay, owner=owner, idempotency_key=scoped
                )
        except QueueError as exc:
            raise from_queue_error(exc) from exc
        body, location = accepted(sent)
        return JSONResponse(body, 202, headers={"Location": location})

    @app.get("/jobs/{job_id}")
    async def show(job_id: str, request: Request) -> dict[str, Any]:
        """The job's status, progress, step, result or error."""
        owner = jobs.auth.owner(request.headers.get("authorization"))
        return (await jobs.visible_job(job_id, owner)).as_json()

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: the job's JSON on every change, until it has finished."""
        # EventSource cannot send headers, so the token may also come as ?access_token=.
        owner = jobs.auth.owner(
            request.headers.get("authorization"), request.query_params.get("access_token")
        )
        job = await jobs.visible_job(job_id, owner)
        return StreamingResponse(_stream(jobs, job.id), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/jobs/{job_id}/artifacts/{name}")
    async def artifact(job_id: str, name: str, request: Request) -> Response:
        """A file the job stored (`ctx.artifact`), with its content type; 404 as for the job itself."""
        # <audio src> and <img src> cannot send headers, so the token may also come as ?access_token=.
        owner = jobs.auth.owner(
            request.headers.get("authorization"), request.query_params.get("access_token")
        )
        return artifact_response(await jobs.visible_artifact(job_id, name, owner))

    @app.get("/queues")
    async def queues() -> list[dict[str, Any]]:
        """The queues this process accepts payloads for, with their JSON schema and an example."""
        return [spec.describe() for spec in jobs.catalog]

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 when the database answers, else 503."""
        try:
            async with jobs.pool.connection(timeout=3) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # any failure to reach the database is "unhealthy"
            body = {"status": "unavailable", "error": str(exc).strip()[:200]}
            return JSONResponse(body, 503)
        return JSONResponse(
            {"status": "ok", "listening": jobs.events.listening, "streams": jobs.events.streams}
        )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Response:
        """The progress page."""
        html = resources.files("web").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    return app


def artifact_response(artifact: Artifact) -> Response:
    """The file with its content type (inline only for INLINE_TYPES), cacheable by the caller only."""
    inline = artifact.content_type.startswith(INLINE_TYPES)
    headers = {
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{artifact.name}"',
    }
    media_type = artifact.content_type if inline else "application/octet-stream"
    return Response(artifact.data, media_type=media_type, headers=headers)


async def _body(request: Request) -> bytes:
    """The request body, read no further than one byte past the limit (check() answers 413)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_PAYLOAD_BYTES:
            break
    return bytes(data)


async def _stream(jobs: Jobs, job_id: UUID) -> AsyncIterator[str]:
    """One `data:` event per distinct state of the job, comments to keep the connection alive."""
    keepalive = jobs.settings.sse_keepalive.total_seconds()
    poll = jobs.settings.sse_poll_interval.total_seconds()
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
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                if time.monotonic() - sent_at >= keepalive:
                    yield ": keepalive\n\n"
                    sent_at = time.monotonic()
            changed.clear()
            job = await jobs.load(job_id)
