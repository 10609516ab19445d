"""`POST /jobs/{job_id}/retry`: send a dead job again under its own id (queues/retry.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from queues.jobs import Job
from queues.retry import aretry
from web.errors import ApiError, job_not_found
from web.openapi import JobView, answers

router = APIRouter()


@router.post(
    "/jobs/{job_id}/retry",
    response_model=None,
    responses=answers(200, "The job, queued again (attempts and error reset).", JobView, 401, 404, 409, 503),
)
async def retry(job_id: str, request: Request) -> dict[str, Any]:
    """Send a `dead` job again: a new delivery of the same job, its dead letter removed (owner or admin)."""
    jobs = request.app.state.jobs
    caller = jobs.auth.caller(request.headers.get("authorization"))
    job: Job = await jobs.visible_job(job_id, caller)  # 404 for another user's job, as for GET
    async with jobs.pool.connection() as conn:
        outcome = await aretry(conn, job.id)
    if outcome.outcome == "unknown":  # pruned meanwhile
        raise job_not_found(job_id)
    if not outcome.retried:
        raise ApiError(409, outcome.outcome, outcome.reason())
    retried: Job = await jobs.visible_job(job_id, caller)
    return retried.as_json()
