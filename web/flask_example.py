"""The same enqueue endpoint for Flask apps: a blueprint, and a runnable example app.

In your own Flask view, enqueueing in your own transaction is three lines::

    from queues import enqueue

    with pool.connection() as conn, conn.transaction():
        conn.execute("INSERT INTO uploads (id, path) VALUES (%s, %s)", (upload_id, path))
        job = enqueue(conn, "text_stats", {"text": text})  # commits or rolls back with the insert

To serve `POST /jobs/<queue>` and `GET /jobs/<job_id>` as the FastAPI web process does (the same
checks, JSON bodies, status codes and headers: both go through web/submit.py and web/errors.py)::

    app.register_blueprint(jobs_blueprint(pool, auth=Auth(jwt_secret)))

Run the example app with `flask --app web.flask_example run` (`pip install 'pgmq-worker[flask]'`).
DATABASE_URL picks the database (migrate it first: `pgmq-worker migrate`); unset, the embedded
PostgreSQL starts and migrates itself.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, url_for
from psycopg_pool import ConnectionPool

from db.connect import resolve, sync_pool
from db.errors import one_line
from db.logs import get_logger
from db.schema import prepare_schema
from db.settings import DatabaseSettings
from queues import pgmq
from queues.catalog import Catalog, load_catalog
from queues.enqueue import MAX_PAYLOAD_BYTES, enqueue
from queues.errors import QueueError
from queues.jobs import get_job, parse_job_id
from web.auth import Auth
from web.errors import ApiError, from_queue_error, job_not_found
from web.settings import DEFAULT_IMPORTS, WebSettings
from web.submit import accepted, check

log = get_logger()
READ_CHUNK = 64 * 1024
POOL_EXTENSION = "pgmq_worker_pool"  # app.extensions key of create_app's pool (close it on shutdown)


def jobs_blueprint(
    pool: ConnectionPool,
    *,
    catalog: Catalog | None = None,
    auth: Auth | None = None,
    url_prefix: str = "",
) -> Blueprint:
    """`POST /jobs/<queue>` and `GET /jobs/<job_id>` on an autocommit psycopg pool (`sync_pool`)."""
    access = auth or Auth(None)
    known = catalog if catalog is not None else Catalog()  # none: any queue, any JSON object
    bp = Blueprint("pgmq_worker_jobs", __name__, url_prefix=url_prefix or None)

    @bp.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.body()), exc.status, exc.headers

    @bp.post("/jobs/<queue>")
    def submit(queue: str) -> tuple[Response, int, dict[str, str]]:
        """Enqueue the JSON body as a job on `queue`: 202 with the job id and its Location."""
        sub = check(
            known,
            queue,
            _body(MAX_PAYLOAD_BYTES),
            delay=request.args.get("delay"),
            idempotency_key=request.headers.get("Idempotency-Key"),
            owner=access.owner(request.headers.get("Authorization")),
        )
        try:
            with pool.connection() as conn:
                sent = enqueue(
                    conn,
                    sub.queue,
                    sub.body,
                    delay=sub.delay,
                    owner=sub.owner,
                    idempotency_key=sub.idempotency_key,
                    catalog=known,
                )
        except QueueError as exc:
            raise from_queue_error(exc) from exc
        # url_for knows every prefix (the factory's, register_blueprint's, the WSGI mount's).
        prefix = url_for(".show", job_id=str(sent.job_id)).removesuffix(f"/jobs/{sent.job_id}")
        body, location = accepted(sent, prefix, events=False)  # no event stream here
        return jsonify(body), 202, {"Location": location}

    @bp.get("/jobs/<job_id>")
    def show(job_id: str) -> Response:
        """The job's status, progress, step, result or error; 404 for another owner's job."""
        owner = access.owner(request.headers.get("Authorization"))
        jid = parse_job_id(job_id)
        job = None
        if jid is not None:
            with pool.connection() as conn:
                job = get_job(conn, jid)
        if job is None or (access.enabled and job.owner != owner):
            raise job_not_found(job_id)
        return jsonify(job.as_json())

    return bp


def _body(limit: int) -> bytes:
    """The request body, but no more than `limit` + 1 bytes of it: check() answers 413 past `limit`."""
    data = bytearray()
    while len(data) <= limit and (chunk := request.stream.read(min(READ_CHUNK, limit + 1 - len(data)))):
        data += chunk
    return bytes(data)


def create_app(database_url: str | None = None, *, modules: tuple[str, ...] = ()) -> Flask:
    """The example app: the jobs blueprint and /healthz on DATABASE_URL (or `database_url`).

    `modules` are the handler modules that declare the queues (default: the `handlers` package).
    """
    settings = WebSettings()
    db = DatabaseSettings() if database_url is None else DatabaseSettings(database_url=database_url)
    catalog = load_catalog(modules or DEFAULT_IMPORTS)
    target = resolve(db)
    prepare_schema(target)  # the embedded database migrates itself; others must be migrated
    pool = sync_pool(target, min_size=min(1, db.pool_max_size), max_size=db.pool_max_size)
    pool.open()
    with pool.connection() as conn:
        for spec in catalog:  # create the declared queues, as the FastAPI app does
            pgmq.ensure_queue(conn, spec.queue)
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    auth = Auth(secret, settings.jwt_audience)

    app = Flask(__name__)
    app.extensions[POOL_EXTENSION] = pool
    app.register_blueprint(jobs_blueprint(pool, catalog=catalog, auth=auth))

    @app.get("/healthz")
    def healthz() -> tuple[dict[str, Any], int]:
        """200 when the database answers, else 503."""
        try:
            with pool.connection(timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:  # any failure to reach the database is "unhealthy"
            return {"status": "unavailable", "error": one_line(exc)}, 503
        return {"status": "ok"}, 200

    log.info("web.started", framework="flask", database=target.describe(), auth=auth.enabled)
    return app
