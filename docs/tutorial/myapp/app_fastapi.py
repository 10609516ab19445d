"""The tutorial's FastAPI app: a page that enqueues a word report and shows its progress."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from jobs import WORD_REPORT, WordReport

from db.connect import Target, async_pool, connect, resolve
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import aenqueue, aget_job, pgmq

PAGE = Path(__file__).with_name("page.html").read_text()


def create_app(target: Target | None = None) -> FastAPI:
    """The app on DATABASE_URL, or on the embedded PostgreSQL when it is unset."""
    target = target or resolve(DatabaseSettings())
    prepare_schema(target)  # the embedded database migrates itself; any other: `pgmq-worker migrate`
    with connect(target) as conn:
        pgmq.ensure_queue(conn, WORD_REPORT.queue)  # the worker would create it too
    pool = async_pool(target, min_size=1, max_size=4)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/reports", status_code=202)
    async def submit(report: WordReport) -> dict[str, str]:
        """Enqueue a word report; the answer names the job to follow."""
        async with pool.connection() as conn:
            job = await aenqueue(conn, WORD_REPORT, report)
        return {"job_id": str(job.job_id)}

    @app.get("/reports/{job_id}")
    async def show(job_id: UUID) -> dict[str, Any]:
        """The job: status, progress, step, and its result once it has one."""
        async with pool.connection() as conn:
            job = await aget_job(conn, job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return job.as_json()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        """The form and its progress bar."""
        return PAGE

    return app
