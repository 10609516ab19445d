"""The dashboard's actions: every one a POST from its own pages, CSRF-checked, answered with a redirect.

Log in and out; cancel and retry a job; replay dead letters (one, all, or by error type) and purge
them; pause and resume a queue. Each redirects back to the page it came from with
`?done=<what>&n=<how many>`, which the page turns into a fixed sentence (a link cannot make it
say anything else).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from queues.cancel import JobFinished, UnknownJob, acancel
from queues.errors import QueueError
from queues.jobs import parse_job_id
from queues.names import validate_queue_name
from queues.pauses import InvalidPauseNote, apause, aresume
from queues.retry import apurge, areplay, aretry
from web.dashboard.access import (
    NotAdmitted,
    check_csrf,
    clear_session,
    read_form,
    set_session,
)
from web.dashboard.site import Dashboard, privileged
from web.errors import ApiError

# Which actions this build can do (the job page and the dead-letters page show their buttons).
AVAILABLE: Final = {"cancel": True, "retry": True, "replay": True, "purge": True, "pause": True}
OLDER_THAN: Final = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}
NOTICES: Final = {
    "cancelled": "Job cancelled.",
    "cancelling": "Cancellation requested: the worker running the job stops it within a heartbeat.",
    "retried": "Job sent again: a new delivery of the same job.",
    "replayed": "{n} dead letter(s) sent back to the queue.",
    "purged": "{n} dead letter(s) purged.",
    "paused": "Queue paused: workers stop reading it within a poll interval; running jobs finish.",
    "already_paused": "The queue was paused already.",
    "resumed": "Queue resumed: workers read it again.",
    "not_paused": "The queue was not paused.",
    "logged_out": "Logged out.",
}


def notice_text(done: str | None, n: str | None) -> str | None:
    """The sentence for `?done=`; None for anything unknown."""
    template = NOTICES.get(done or "")
    if template is None:
        return None
    count = n if n is not None and n.isascii() and n.isdigit() and len(n) < 10 else "?"
    return template.format(n=count)


def back(path: str, done: str, n: int | None = None) -> RedirectResponse:
    """303 to a dashboard page with the notice of what was done."""
    suffix = ("&" if "?" in path else "?") + f"done={done}" + ("" if n is None else f"&n={n}")
    return RedirectResponse(path + suffix, 303)


def refuse(dash: Dashboard, request: Request, status: int, title: str, message: str) -> Response:
    """An action that could not be done: the error page with its status."""
    return dash.show(request, None, "error.html", status, title=title, message=message)


def add(router: APIRouter, dash: Dashboard) -> None:
    """Register the actions on the dashboard's router."""
    _add_session(router, dash)
    _add_job_actions(router, dash)
    _add_dead_letter_actions(router, dash)
    _add_queue_actions(router, dash)


async def admitted_form(dash: Dashboard, request: Request) -> dict[str, str]:
    """The form of an admitted visitor's POST, CSRF-checked; NotAdmitted/ApiError otherwise."""
    visitor = dash.access.admit(request)
    form = await read_form(request)
    if visitor.via != "bearer":  # a browser: a cross-site page could have sent it
        check_csrf(request, form)
    return form


def _add_session(router: APIRouter, dash: Dashboard) -> None:

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        try:
            check_csrf(request, form)
        except ApiError as exc:
            return dash.show(
                request, None, "error.html", exc.status, title="Not allowed", message=exc.message
            )
        token = form.get("token", "").strip()
        target = form.get("next", "")
        target = (
            target
            if target.startswith("/dashboard") and not target.startswith("/dashboard/login")
            else "/dashboard"
        )
        if not token or not dash.access.is_admin_token(token):
            return dash.show(
                request,
                None,
                "login.html",
                401,
                next=target,
                problem="That is not the admin token (nor a service_role token).",
                configured=dash.access.login_configured(),
            )
        response = RedirectResponse(target, 303)
        set_session(request, response, token, dash.access.session_age(token))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        try:
            await admitted_form(dash, request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)
        response = back("/dashboard/login", "logged_out")
        clear_session(request, response)
        return response


def _add_job_actions(router: APIRouter, dash: Dashboard) -> None:
    @router.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str, request: Request) -> Response:
        try:
            await admitted_form(dash, request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)
        jid = parse_job_id(job_id)
        if jid is None:
            return refuse(dash, request, 404, "No such job", f"no job {job_id[:80]!r}")
        async with dash.jobs.pool.connection() as conn:
            try:
                done = await acancel(conn, jid)
            except UnknownJob:
                return refuse(dash, request, 404, "No such job", f"no job {job_id[:80]!r}")
            except JobFinished as exc:
                return refuse(dash, request, 409, "Already finished", str(exc))
        return back(f"/dashboard/jobs/{jid}", "cancelled" if done.immediate else "cancelling")

    @router.post("/jobs/{job_id}/retry")
    async def retry(job_id: str, request: Request) -> Response:
        try:
            await admitted_form(dash, request)
        except (NotAdmitted, ApiError) as exc:
            return dash.refused(request, exc)
        jid = parse_job_id(job_id)
        if jid is None:
            return refuse(dash, request, 404, "No such job", f"no job {job_id[:80]!r}")
        async with dash.jobs.pool.connection() as conn:
            result = await aretry(conn, jid)
        if not result.retried:
            status = 404 if result.outcome == "unknown" else 409
            return refuse(dash, request, status, "Not retried", result.reason())
        return back(f"/dashboard/jobs/{jid}", "retried")


async def queue_form(
    dash: Dashboard, request: Request, queue: str | None = None
) -> dict[str, str] | Response:
    """An admitted, CSRF-checked form about `queue` (None: the form's `queue` field, put in the
    result as `queue`); the refusal (404 for a bad name) otherwise."""
    try:
        form = await admitted_form(dash, request)
    except (NotAdmitted, ApiError) as exc:
        return dash.refused(request, exc)
    name = form.get("queue", "") if queue is None else queue
    try:
        validate_queue_name(name)
    except QueueError as exc:
        return refuse(dash, request, 404, "No such queue", str(exc))
    return form | {"queue": name}


def _add_dead_letter_actions(router: APIRouter, dash: Dashboard) -> None:
    @router.post("/dead-letters/{queue}/replay")
    async def replay(queue: str, request: Request) -> Response:
        form = await queue_form(dash, request, queue)
        if isinstance(form, Response):
            return form
        scope = form.get("scope", "")
        ids: list[int] | None = None
        error_type: str | None = None
        if scope == "one":
            text = form.get("msg_id", "")
            if not (text.isascii() and text.isdigit() and len(text) < 19):
                return refuse(dash, request, 400, "Bad request", "msg_id: a dead letter's message id")
            ids = [int(text)]
        elif scope == "error_type":
            error_type = form.get("error_type", "")[:200]
        elif scope != "all":
            return refuse(dash, request, 400, "Bad request", "scope: one, all or error_type")
        async with dash.jobs.pool.connection() as conn:
            try:
                sent = await areplay(conn, queue, ids, error_type=error_type)
            except QueueError as exc:
                return refuse(dash, request, 404, "No such queue", str(exc))
        return back(f"/dashboard/dead-letters?queue={queue}", "replayed", len(sent))

    @router.post("/dead-letters/{queue}/purge")
    async def purge(queue: str, request: Request) -> Response:
        form = await queue_form(dash, request, queue)
        if isinstance(form, Response):
            return form
        older: timedelta | None = None
        if form.get("older_than"):
            older = OLDER_THAN.get(form["older_than"])
            if older is None:
                return refuse(dash, request, 400, "Bad request", "older_than: 1h, 1d or 7d")
        async with dash.jobs.pool.connection() as conn:
            try:
                gone = await apurge(conn, queue, older)
            except QueueError as exc:
                return refuse(dash, request, 404, "No such queue", str(exc))
        return back(f"/dashboard/dead-letters?queue={queue}", "purged", gone)


def _add_queue_actions(router: APIRouter, dash: Dashboard) -> None:
    """Pause and resume: the queue is a field of the form (the Queues page's select picks it)."""

    @router.post("/queues/pause")
    @privileged(dash)
    async def pause(request: Request) -> Response:
        form = await queue_form(dash, request)
        if isinstance(form, Response):
            return form
        async with dash.jobs.pool.connection() as conn:
            try:
                done = await apause(conn, form["queue"], by="dashboard", reason=form.get("reason"))
            except InvalidPauseNote as exc:
                return refuse(dash, request, 400, "Bad request", str(exc))
            except QueueError as exc:  # a dead-letter queue, or no such queue
                return refuse(dash, request, 404, "No such queue", str(exc))
        return back("/dashboard", "already_paused" if done.already else "paused")

    @router.post("/queues/resume")
    @privileged(dash)
    async def resume(request: Request) -> Response:
        form = await queue_form(dash, request)
        if isinstance(form, Response):
            return form
        async with dash.jobs.pool.connection() as conn:
            try:
                lifted = await aresume(conn, form["queue"])
            except QueueError as exc:
                return refuse(dash, request, 404, "No such queue", str(exc))
        return back("/dashboard", "not_paused" if lifted is None else "resumed")
