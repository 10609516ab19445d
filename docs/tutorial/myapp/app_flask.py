"""The tutorial's Flask app: the same page, routes and job as the FastAPI one."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from flask import Flask, abort, request
from jobs import WORD_REPORT

from db.connect import Target, connect, resolve, sync_pool
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import InvalidPayload, enqueue, get_job, pgmq

PAGE = Path(__file__).with_name("page.html").read_text()


def create_app(target: Target | None = None) -> Flask:
    """The app on DATABASE_URL, or on the embedded PostgreSQL when it is unset."""
    target = target or resolve(DatabaseSettings())
    prepare_schema(target)  # the embedded database migrates itself; any other: `pgmq-worker migrate`
    with connect(target) as conn:
        pgmq.ensure_queue(conn, WORD_REPORT.queue)  # the worker would create it too
    pool = sync_pool(target, min_size=1, max_size=4)
    pool.open()

    app = Flask(__name__)
    app.extensions["pool"] = pool  # close it on shutdown: app.extensions["pool"].close()

    @app.post("/reports")
    def submit() -> tuple[dict[str, Any], int]:
        """Enqueue a word report; the payload is checked against WordReport first."""
        try:
            with pool.connection() as conn:
                job = enqueue(conn, WORD_REPORT, request.get_json(silent=True))
        except InvalidPayload as exc:
            return {"error": str(exc)}, 422
        return {"job_id": str(job.job_id)}, 202

    @app.get("/reports/<uuid:job_id>")
    def show(job_id: UUID) -> dict[str, Any]:
        """The job: status, progress, step, and its result once it has one."""
        with pool.connection() as conn:
            job = get_job(conn, job_id)
        if job is None:
            abort(404)
        return job.as_json()

    @app.get("/")
    def page() -> str:
        """The form and its progress bar."""
        return PAGE

    return app
