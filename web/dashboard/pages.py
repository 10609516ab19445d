"""The dashboard's GET pages: queues, jobs, one job, workers, dead letters, the login form, static files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from queues.dead_letter_list import adead_queues, aentries, aerror_types
from queues.errors import InvalidQueueName
from queues.job_detail import JobDetail, aget_detail
from queues.job_list import STATUSES, alist_jobs
from queues.jobs import Job, aget_job, parse_job_id
from queues.names import validate_queue_name
from queues.overview import aoverview, aqueues
from queues.schedule_list import aschedules
from queues.workers import alist_workers
from web.dashboard.access import NotAdmitted, Visitor
from web.dashboard.actions import AVAILABLE, notice_text
from web.dashboard.filters import BadFilter, parse
from web.dashboard.render import STATIC
from web.dashboard.site import Dashboard, privileged
from web.errors import ApiError


def gate(dash: Dashboard, request: Request) -> Visitor | Response:
    """The admitted visitor, or the answer for a refused one."""
    try:
        return dash.access.admit(request)
    except (NotAdmitted, ApiError) as exc:
        return dash.refused(request, exc)


def timeline(job: Job, detail: JobDetail) -> list[tuple[datetime, str]]:
    """What happened to the job, in order: created, started, each step, finished (as far as rows tell)."""
    events: list[tuple[datetime, str]] = [(job.created_at, "created, queued")]
    for step in detail.steps:
        if step.started_at:
            events.append((step.started_at, f"step {step.name} started (run {step.attempts})"))
        if step.finished_at:
            events.append((step.finished_at, f"step {step.name} {step.status}"))
    if job.started_at:
        events.append((job.started_at, f"attempt {max(job.attempts, 1)} started"))
    for fan_out in detail.fan_outs:
        events.append((fan_out.created_at, f"fanned out {fan_out.total} children ({fan_out.name})"))
    if job.finished_at:
        events.append((job.finished_at, f"finished: {job.status}"))
    elif job.updated_at > (events[-1][0] if events else job.updated_at):
        events.append((job.updated_at, f"now {job.status} at {job.progress}%"))
    return sorted(events, key=lambda e: e[0])


def notice(request: Request) -> str | None:
    """The sentence for an action's `?done=` redirect."""
    return notice_text(request.query_params.get("done"), request.query_params.get("n"))


def add(router: APIRouter, dash: Dashboard) -> None:
    """Register the pages on the dashboard's router."""
    _add_lists(router, dash)
    _add_others(router, dash)


def _add_lists(router: APIRouter, dash: Dashboard) -> None:

    @router.get("")
    @privileged(dash)
    async def queues_page(request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        async with dash.jobs.pool.connection() as conn:
            rows = await aoverview(conn)
        return dash.show(
            request, visitor, "queues.html", queues=rows, section="queues", notice=notice(request)
        )

    @router.get("/jobs")
    @privileged(dash)
    async def jobs_page(request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        async with dash.jobs.pool.connection() as conn:
            names = await aqueues(conn)
            context: dict[str, Any] = {"queue_names": names, "statuses": STATUSES, "section": "jobs"}
            try:
                query = parse(request.query_params)
            except BadFilter as exc:
                raw = {
                    k: request.query_params.get(k, "")[:200]
                    for k in ("queue", "status", "owner", "since", "until", "error")
                }
                return dash.show(
                    request, visitor, "jobs.html", 400, raw=raw, page=None, problem=str(exc), **context
                )
            page = await alist_jobs(conn, query.where, query.limit, before=query.before, after=query.after)
        return dash.show(
            request, visitor, "jobs.html", raw=query.raw, page=page, query=query, problem=None, **context
        )

    @router.get("/jobs/{job_id}")
    @privileged(dash)
    async def job_page(job_id: str, request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        jid = parse_job_id(job_id)
        async with dash.jobs.pool.connection() as conn:
            job = await aget_job(conn, jid) if jid is not None else None
            if job is None:
                message = f"no job {job_id[:80]!r}"
                return dash.show(request, visitor, "error.html", 404, title="No such job", message=message)
            detail = await aget_detail(conn, job.id, job.queue, job.msg_id)
        return dash.show(
            request,
            visitor,
            "job.html",
            job=job,
            detail=detail,
            timeline=timeline(job, detail),
            actions=AVAILABLE,
            section="jobs",
            notice=notice(request),
        )


def _add_others(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/workers")
    @privileged(dash)
    async def workers_page(request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        async with dash.jobs.pool.connection() as conn:
            found = await alist_workers(conn)
        return dash.show(request, visitor, "workers.html", workers=found, section="workers")

    @router.get("/dead-letters")
    @privileged(dash)
    async def dead_letters_page(request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        async with dash.jobs.pool.connection() as conn:
            found = await adead_queues(conn)
            queue = request.query_params.get("queue") or (found[0][0] if found else "")
            context: dict[str, Any] = {"dead_queues": found, "section": "dead_letters", "actions": AVAILABLE}
            if queue and queue not in {name for name, _ in found}:
                try:
                    validate_queue_name(queue)
                    message = f"queue {queue!r} has no dead-letter queue"
                except InvalidQueueName as exc:
                    message = str(exc)
                return dash.show(request, visitor, "error.html", 404, title="No such queue", message=message)
            entries = await aentries(conn, queue) if queue else []
            types = await aerror_types(conn, queue) if queue else []
        return dash.show(
            request,
            visitor,
            "dead_letters.html",
            queue=queue,
            entries=entries,
            error_types=types,
            notice=notice(request),
            **context,
        )

    @router.get("/schedules")
    @privileged(dash)
    async def schedules_page(request: Request) -> Response:
        visitor = gate(dash, request)
        if isinstance(visitor, Response):
            return visitor
        async with dash.jobs.pool.connection() as conn:
            found = await aschedules(conn)
        return dash.show(request, visitor, "schedules.html", schedules=found, section="schedules")

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        target = request.query_params.get("next", "/dashboard")
        return dash.show(
            request,
            None,
            "login.html",
            next=target if target.startswith("/dashboard") else "/dashboard",
            problem=None,
            configured=dash.access.login_configured(),
            notice=notice(request),
        )

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise ApiError(404, "not_found", f"no dashboard file {name[:80]!r}")
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(dash.pages.static[name], media_type=STATIC[name], headers=headers)
