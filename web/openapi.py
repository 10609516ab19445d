"""What the OpenAPI document says each route answers: the bodies and error statuses.

The routes build their JSON themselves (`Job.as_json`, `submit.accepted`, `errors.ApiError`), so
these models only describe it; tests/test_docs.py checks them against real answers, and the
documentation's HTTP API page is generated from the document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="Stable, for programs: `unknown_queue`, `invalid_payload`, ...")
    message: str = Field(description="For people: names the field or the limit.")


class ErrorBody(BaseModel):
    """Every error answer's body."""

    error: ErrorDetail


class Accepted(BaseModel):
    """The 202 answer to `POST /jobs/{queue}` (also `Location: /jobs/{job_id}`)."""

    job_id: UUID = Field(description="The job's id (time-ordered UUIDv7).")
    queue: str = Field(description="The queue the message went to.")
    msg_id: int = Field(description="pgmq's message id.")
    created: bool = Field(description="`false` when an `Idempotency-Key` returned an unfinished job.")
    status_url: str = Field(description="`GET` it for the job.")
    events_url: str = Field(description="Its Server-Sent Events stream.")


class JobView(BaseModel):
    """A job row as clients see it (`GET /jobs/{id}` and each event of its stream)."""

    id: UUID
    queue: str
    msg_id: int
    status: JobStatus
    progress: int = Field(description="0-100.")
    step: str | None = Field(description="The step the handler last reported.")
    detail: Any = Field(description="The JSON detail of the last progress report.")
    attempts: int = Field(description="Deliveries so far, less deferrals.")
    result: Any = Field(description="The handler's return value, once `succeeded`.")
    error: Any = Field(description="`{type, message, traceback}` of the last failure.")
    owner: UUID | None = Field(description="The user whose token enqueued it.")
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None


class QueueView(BaseModel):
    """A queue this process accepts payloads for."""

    queue: str
    summary: str = Field(description="The payload model's docstring.")
    schema_: dict[str, Any] = Field(alias="schema", description="The payload's JSON Schema.")
    example: dict[str, Any] = Field(description="A payload that passes the schema.")
    steps: list[str] = Field(description="The handler's declared steps, in order.")


ERRORS: dict[int, str] = {
    400: "`invalid_json` (not JSON, empty, nested deeper than 128 levels) or `bad_request` "
    "(a bad `delay` or `Idempotency-Key`)",
    401: "`unauthorized`: a JWT secret is set and the token is missing, expired or invalid",
    404: "`unknown_queue`, `unknown_job` or `unknown_artifact` (another user's job is unknown too)",
    409: "`job_finished` (cancel: the job has already finished; the message names its status), "
    "`not_dead` (retry: only a dead job is retried; the message names its status), "
    "`no_dead_letter` (its dead letter was purged) or `conflict` (its idempotency key is taken)",
    413: "`payload_too_large`: over 1 MiB",
    414: "`uri_too_long`: path and query over 16 KiB (any route)",
    422: "`invalid_payload`: fails the queue's model or may not be stored; the message names the field",
    431: "`headers_too_large`: the headers over 32 KiB, or `Authorization` over 8 KiB (any route)",
    503: "`database_unavailable`: no database connection within 3 s (with `Retry-After`)",
}
# What the Guard middleware (web/security.py) may answer on any route, before the route runs.
GUARD_ERRORS = (414, 431)


def answers(ok: int, ok_text: str, model: Any, *errors: int) -> dict[int | str, Any]:
    """A route's `responses=`: its success answer (`model` may be None) and its error statuses."""
    success: dict[str, Any] = {"description": ok_text}
    if model is not None:
        success["model"] = model
    documented: dict[int | str, Any] = {ok: success}
    for code in errors:
        documented[code] = {"model": ErrorBody, "description": ERRORS[code]}
    return documented


PAYLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The payload: a JSON object that the queue's model accepts (`GET /queues`).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "parameters": [
        {
            "name": "delay",
            "in": "query",
            "required": False,
            "description": "Seconds before the job becomes visible to workers.",
            "schema": {"type": "number", "minimum": 0},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "A repeat while the job is unfinished returns that job (`created: false`).",
            "schema": {"type": "string"},
        },
    ],
}

TOKEN_PARAMETER: dict[str, Any] = {
    "parameters": [
        {
            "name": "access_token",
            "in": "query",
            "required": False,
            "description": "The access token, for clients that cannot send headers (EventSource, "
            "`<img>`, `<audio>`); redacted in the request log.",
            "schema": {"type": "string"},
        }
    ]
}


def _error_answer(code: int) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": ERRORS[code], "content": {"application/json": {"schema": schema}}}


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """The app's routes in the document, those of included routers too."""
    for route in routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:  # FastAPI's include_router
            yield from _api_routes(router.routes)


def _validates(route: APIRoute) -> bool:
    """Whether FastAPI checks anything of the request itself (a typed parameter or body): its 422."""
    dependant = route.dependant
    typed = (
        *dependant.query_params,
        *dependant.header_params,
        *dependant.cookie_params,
        *dependant.body_params,
    )
    return bool(typed) or any(p.field_info.annotation is not str for p in dependant.path_params)


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document as the routes really answer (`app.openapi`; built once).

    FastAPI lists a 422 validation error for every route with a parameter; ours take their path
    segments as plain strings and check them themselves, so a route whose FastAPI layer checks
    nothing loses that 422 (its own 422, an ErrorBody, stays). The Guard's statuses are added to
    every route. tests/integration/test_api_contract.py provokes each documented status and
    checks that no undocumented one appears.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for route in _api_routes(app.routes):
        operations = doc["paths"].get(route.path_format, {})
        for method in route.methods or ():
            if method.lower() not in operations:
                continue  # a router included with a prefix: its 422 stays as FastAPI wrote it
            responses = operations[method.lower()]["responses"]
            if not _validates(route) and "HTTPValidationError" in json.dumps(responses.get("422", {})):
                del responses["422"]
            for code in GUARD_ERRORS:
                responses.setdefault(str(code), _error_answer(code))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    if "HTTPValidationError" not in json.dumps(doc["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    if "ErrorBody" not in schemas:
        schemas.update(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas["ErrorBody"].pop("$defs", None)
    app.openapi_schema = doc
    return doc
