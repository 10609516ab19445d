"""The operator dashboard at /dashboard: queues, jobs, a job, workers and dead letters.

Server-rendered pages (web/dashboard/templates), one stylesheet and one script
(web/dashboard/static) that keeps the open page current through Server-Sent Events, and POST
actions behind a CSRF check. Who may see it: web/dashboard/access.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from web.dashboard import actions, live, pages
from web.dashboard.site import Dashboard

if TYPE_CHECKING:
    from web.app import Jobs


def dashboard_router(jobs: Jobs) -> APIRouter:
    """The /dashboard routes for one app."""
    dash = Dashboard(jobs)
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    pages.add(router, dash)
    actions.add(router, dash)
    live.add(router, dash)
    return router


__all__ = ["Dashboard", "dashboard_router"]
