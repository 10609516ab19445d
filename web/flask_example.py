"""The same enqueue endpoint for Flask apps: a blueprint, and a runnable example app.

In your own Flask view, enqueueing in your own transaction is three lines::

    from queues import enqueue

    with pool.connection() as conn, conn.transaction():
        conn.execute("INSERT INTO uploads (id, path) VALUES (%s, %s)", (upload_id, path))
        job = enqueue(conn, "text_stats", {"text": text})  # commits or rolls back with the insert

To expose `POST /jobs/<queue>` and `GET /jobs/<id>` exactly as the FastAPI web process does
(same checks, same JSON, same errors), register the blueprint::

    app.register_blueprint(jobs_blueprint(pool))

Run the example app: `DATABASE_URL=... flask --app web.flask_example run` (needs `pip install
'pgmq-worker[flask]'`; the database must have been migrated with `pgmq-worker migrate`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from psycopg_pool import ConnectionPool

from db.connect import resolve, sync_pool
from db.settings import DatabaseSettings
from queues.catalog import Catalog, import_modules
from queues.catalog import catalog as default_catalog
from queues.enqueue import enqueue
from queues.errors import QueueError
from queues.jobs import get_job, parse_job_id
from web.auth import Auth
from web.errors import ApiError, from_queue_error, job_not_found
from web.settings import WebSettings
from web.submit import accepted, check


def jobs_blueprint(
    pool: ConnectionPool,
    *,
    catalog: Catalog = default_catalog,
    auth: Auth | None = None,
    url_prefix: str = "",
) -> Blueprint:
    """`POST /jobs/<queue>` and `GET /jobs/<job_id>` on a psycopg pool (autocommit connections)."""
    access = auth or Auth(None)
    bp = Blueprint("pgmq_worker_jobs", __name__, url_prefix=url_prefix or None)

    @bp.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.body()), exc.status, exc.headers

    @bp.post("/jobs/<queue>")
    def submit(queue: str) -> tuple[Response, int, dict[str, str]]:
        owner = access.owner(request.headers.get("Authorization"))
        key = request.headers.get("Idempotency-Key")
        sub = check(catalog, queue, request.get_data(), delay=request.args.get("delay"), idempotency_key=key)
        # Keys are per caller, as in the FastAPI app: another user's key never returns their job.
        scoped = None if key is None else (f"{owner}:{key}" if owner is not None else key)
        try:
            with pool.connection() as conn:
                sent = enqueue(conn, sub.ref, sub.body, delay=sub.delay, owner=owner, idempotency_key=scoped)
        except QueueError as exc:
            raise from_queue_error(exc) from exc
        body, location = accepted(sent, url_prefix)
        return jsonify(body), 202, {"Location": location}

    @bp.get("/jobs/<job_id>")
    def show(job_id: str) -> Response:
        owner = access.owner(request.headers.get("Authorization"))
        jid = parse_job_id(job_id)
        with pool.connection() as conn:
            job = get_job(conn, jid) if jid is not None else None
        if job is None or (access.enabled and job.owner != owner):
            raise job_not_found(job_id)
        return jsonify(job.as_json())

    return bp


def create_app(database_url: str | None = None, *, modules: tuple[str, ...] = ()) -> Flask:
    """A Flask app with the jobs blueprint, on DATABASE_URL (or `database_url`)."""
    settings = WebSettings()
    db_settings = DatabaseSettings() if database_url is None else DatabaseSettings(database_url=database_url)
    import_modules(modules)  # the handler modules declare the queues and their payload models
    pool = sync_pool(resolve(db_settings), min_size=1, max_size=db_settings.pool_max_size)
    pool.open()
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    app = Flask(__name__)
    app.register_blueprint(jobs_blueprint(pool, auth=Auth(secret, settings.jwt_audience)))
    app.extensions["pgmq_worker_pool"] = pool

    @app.get("/healthz")
    def healthz() -> tuple[dict[str, Any], int]:
        try:
            with pool.connection(timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:  # any failure to reach the database is "unhealthy"
            return {"status": "unavailable", "error": str(exc).strip()[:200]}, 503
        return {"status": "ok"}, 200

    return app
