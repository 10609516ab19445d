"""Live pages: Server-Sent Events that carry re-rendered fragments of the open page.

Each event is `{"target": <element id>, "html": <the fragment, rendered by the same template as
the page>}`; dashboard.js swaps it in. The queues page's rows are re-read every few seconds; a
job page follows the job's row changes (web/events.py, the same notifications as the API's
stream) and gets `event: reload` when the job has finished, so the whole page shows its end.
A stream lasts a few minutes at most, then EventSource reconnects and is admitted again (a
logged-out or expired credential ends there).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from db.logs import get_logger
from queues.jobs import aget_job, parse_job_id
from queues.overview import aoverview
from queues.workers import alist_workers
from web.dashboard.access import NotAdmitted, csrf_token
from web.dashboard.site import Dashboard
from web.errors import DB_ERRORS, ApiError

log = get_logger()
REFRESH_S: Final = 5.0  # the queues and workers pages' numbers (queues/stats.py reads the job rows)
MAX_STREAM_S: Final = 300.0
SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RELOAD: Final = "event: reload\ndata: {}\n\n"


def fragment(target: str, html: str) -> str:
    """One SSE event replacing the element `target` with `html`."""
    return f"data: {json.dumps({'target': target, 'html': html}, separators=(',', ':'))}\n\n"


async def refreshing(
    render: Callable[[], Awaitable[str]], target: str, every_s: float, keepalive_s: float
) -> AsyncIterator[str]:
    """Render `target` every `every_s`, sending it when it changed (a comment otherwise, now and then)."""
    started = sent_at = time.monotonic()
    last = None
    try:
        while time.monotonic() - started < MAX_STREAM_S:
            html = await render()
            if html != last:
                yield fragment(target, html)
                last, sent_at = html, time.monotonic()
            elif time.monotonic() - sent_at >= keepalive_s:
                yield ": keepalive\n\n"
                sent_at = time.monotonic()
            await asyncio.sleep(every_s)
    except DB_ERRORS as exc:  # headers are sent: end the stream; EventSource reconnects
        log.warning("dashboard.stream_failed", target=target, error=type(exc).__name__)


def add(router: APIRouter, dash: Dashboard) -> None:
    """Register the streams on the dashboard's router."""
    keepalive = dash.jobs.settings.sse_keepalive.total_seconds()
    poll = dash.jobs.settings.sse_poll_interval.total_seconds()

    def stream(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    @router.get("/events/queues")
    async def queue_events(request: Request) -> Response:
        try:
            dash.access.admit(request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)

        async def rows() -> str:
            async with dash.jobs.pool.connection() as conn:
                found = await aoverview(conn)
            # The rows' Pause and Resume forms carry the token the page set (its cookie).
            return dash.pages.env.get_template("queue_rows.html").render(queues=found, csrf=csrf)

        csrf = csrf_token(request)[0]

        return stream(refreshing(rows, "queue-rows", REFRESH_S, keepalive))

    @router.get("/events/workers")
    async def worker_events(request: Request) -> Response:
        try:
            dash.access.admit(request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)

        async def rows() -> str:
            async with dash.jobs.pool.connection() as conn:
                found = await alist_workers(conn)
            return dash.pages.env.get_template("worker_rows.html").render(workers=found)

        return stream(refreshing(rows, "worker-rows", REFRESH_S, keepalive))

    @router.get("/events/jobs/{job_id}")
    async def job_events(job_id: str, request: Request) -> Response:
        try:
            dash.access.admit(request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)
        jid = parse_job_id(job_id)
        if jid is None:
            raise ApiError(404, "unknown_job", f"no job {job_id[:80]!r}")
        return stream(follow(jid))

    async def follow(job_id: UUID) -> AsyncIterator[str]:
        template = dash.pages.env.get_template("job_live.html")
        started = time.monotonic()
        try:
            async with dash.jobs.events.subscribe(job_id) as changed:
                last = None
                while time.monotonic() - started < MAX_STREAM_S:
                    async with dash.jobs.pool.connection() as conn:
                        job = await aget_job(conn, job_id)
                    if job is None:
                        return
                    html = template.render(job=job)
                    if html != last:
                        yield fragment("job-live", html)
                        last = html
                    if job.finished:
                        yield RELOAD
                        return
                    wait = keepalive if dash.jobs.events.listening else min(poll, keepalive)
                    try:
                        await asyncio.wait_for(changed.wait(), wait)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                    changed.clear()
        except DB_ERRORS as exc:
            log.warning("dashboard.stream_failed", job_id=str(job_id), error=type(exc).__name__)
