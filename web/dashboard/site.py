"""What the dashboard's routes share: the web app's Jobs, the gate, the templates, and how a page answers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec
from urllib.parse import quote

import psycopg
from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from web.dashboard.access import Access, NotAdmitted, Visitor, csrf_token, set_csrf_cookie
from web.dashboard.render import Pages
from web.errors import ApiError

if TYPE_CHECKING:
    from web.app import Jobs

P = ParamSpec("P")
NO_GRANT = (
    "the web process's database role may not read {what} (the least-privilege `web` role reads only the"
    " job rows): run the dashboard's web process as the role that migrated, or grant it SELECT there"
)


class Dashboard:
    """One app's dashboard: its Jobs (pool, auth, job events), its gate and its templates."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.access = Access(jobs.auth)
        self.pages = Pages()

    def show(
        self, request: Request, visitor: Visitor | None, template: str, status: int = 200, **ctx: Any
    ) -> Response:
        """Render a page for `visitor`; its forms carry this browser's CSRF token (set on a first visit)."""
        token, new = csrf_token(request)
        ctx.setdefault("notice", None)
        ctx.setdefault("section", "")
        response = self.pages.render(template, status, visitor=visitor, csrf=token, **ctx)
        if new:
            set_csrf_cookie(request, response, token)
        return response

    def refused(self, request: Request, exc: NotAdmitted | ApiError) -> Response:
        """A refused request: the login form for a page, 401 (or the credential's 401/403) otherwise."""
        if isinstance(exc, ApiError):
            return self.show(
                request, None, "error.html", exc.status, title="Not allowed", message=exc.message
            )
        if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/dashboard/login?next={quote(target, safe='')}", 303)
        message = "the dashboard needs the admin credential: log in at /dashboard/login"
        return self.show(request, None, "error.html", 401, title="Log in first", message=message)


Page = Callable[P, Awaitable[Response]]


def privileged(dash: Dashboard) -> Callable[[Page[P]], Page[P]]:
    """A page that answers a clear 503 page, not a 500, when the database role may not read a table."""

    def decorate(page: Page[P]) -> Page[P]:
        @functools.wraps(page)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Response:
            try:
                return await page(*args, **kwargs)
            except psycopg.errors.InsufficientPrivilege as exc:
                request = next(a for a in [*args, *kwargs.values()] if isinstance(a, Request))
                what = (exc.diag.message_primary or "a table").removeprefix("permission denied for ")
                message = NO_GRANT.format(what=what)
                return dash.show(
                    request, None, "error.html", 503, title="Not allowed to read", message=message
                )

        return guarded

    return decorate
