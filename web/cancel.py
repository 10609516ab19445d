"""`POST /jobs/{id}/cancel`: the job's owner (as `GET /jobs/{id}` sees it) or an admin cancels it.

200 with the job when it ended `cancelled` at once (it had not started), 202 with the job when it
is running and was marked (its worker stops it within about a heartbeat interval), 409 when it
has already finished (the message names its status), 404 for an unknown job, another user's job
or an id that is no job id at all. The request has no body (one sent is not read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from db.logs import get_logger
from queues.cancel import JobFinished, UnknownJob, acancel
from web.errors import ApiError, job_not_found
from web.openapi import JobView, answers

if TYPE_CHECKING:
    from web.app import Jobs

log = get_logger()
router = APIRouter()

OK = "Cancelled at once (it had not started): the job, now `cancelled`."
MARKED = "Running: marked, its worker stops it within about a heartbeat interval; the job, still `running`."
RESPONSES: dict[int | str, Any] = answers(200, OK, JobView, 401, 404, 409, 503) | {
    202: {"model": JobView, "description": MARKED}
}


@router.post("/jobs/{job_id}/cancel", response_model=None, responses=RESPONSES)
async def cancel(job_id: str, request: Request) -> JSONResponse:
    """Cancel the job: 200 ended now, 202 marked while it runs, 409 already finished."""
    jobs: Jobs = request.app.state.jobs
    caller = jobs.auth.caller(request.headers.get("authorization"))
    job = await jobs.visible_job(job_id, caller)  # 404 for an unknown id, a bad one, another user's
    try:
        async with jobs.pool.connection() as conn:
            result = await acancel(conn, job.id)
    except UnknownJob:  # deleted in between
        raise job_not_found(job_id) from None
    except JobFinished as exc:
        raise ApiError(409, "job_finished", str(exc)) from None
    # Ended now: `job.cancelled` here (no worker saw it); marked: the worker logs it when it stops.
    said = {"job_id": str(job.id), "queue": job.queue, "children": result.children, "admin": caller.admin}
    if result.immediate:
        log.info("job.cancelled", **said)
    else:
        log.info("job.cancel_requested", **said)
    return JSONResponse(result.job.as_json(), 200 if result.immediate else 202)
