"""Job artifacts: files a job produces, stored in Postgres and served by the web process.

The worker and the web process run on different machines (Fly.io), so a file a handler makes
(a sentence's audio, a generated image) lives in `pgmq_worker.job_artifacts` (migration 0012)
beside its job: the worker writes it with `ctx.artifact(...)`, the web process serves it at
`artifact_path(job_id, name)` to whoever may see the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import psycopg

from queues.errors import InvalidArtifact

MAX_ARTIFACT_BYTES: Final = 10 * 1024 * 1024  # the table's CHECK says the same
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
CONTENT_TYPE: Final = re.compile(
    r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*(?:; ?[a-z0-9-]+=[A-Za-z0-9._-]+)?"
)

PUT_ARTIFACT = (
    "INSERT INTO pgmq_worker.job_artifacts (job_id, name, content_type, data) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (job_id, name) DO UPDATE"
    " SET content_type = EXCLUDED.content_type, data = EXCLUDED.data, created_at = now()"
)
GET_ARTIFACT = (
    "SELECT name, content_type, data FROM pgmq_worker.job_artifacts WHERE job_id = %s AND name = %s"
)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One stored file of a job."""

    name: str
    content_type: str
    data: bytes


def artifact_path(job_id: UUID, name: str) -> str:
    """The URL path the web process serves the artifact at."""
    return f"/jobs/{job_id}/artifacts/{name}"


def check_artifact(name: str, data: bytes, content_type: str) -> None:
    """InvalidArtifact unless the name is a plain file name, the type a MIME type, the data small enough."""
    if not NAME.fullmatch(name):
        raise InvalidArtifact(
            f"artifact name {name!r}: 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not CONTENT_TYPE.fullmatch(content_type):
        raise InvalidArtifact(f"artifact {name!r}: {content_type!r} is not a lowercase MIME type")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArtifact(f"artifact {name!r}: the data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_ARTIFACT_BYTES:
        raise InvalidArtifact(
            f"artifact {name!r} is {len(data)} bytes, over the {MAX_ARTIFACT_BYTES}-byte limit:"
            " store big files in object storage and keep their URL in the result"
        )


async def aput_artifact(
    conn: psycopg.AsyncConnection[Any], job_id: UUID, name: str, data: bytes, content_type: str
) -> str:
    """Store (or replace) a file of the job; its URL path. InvalidArtifact for a bad one."""
    check_artifact(name, data, content_type)
    await conn.execute(PUT_ARTIFACT, (job_id, name, content_type, bytes(data)))
    return artifact_path(job_id, name)


async def aget_artifact(conn: psycopg.AsyncConnection[Any], job_id: UUID, name: str) -> Artifact | None:
    """The stored file, or None (also for a name no artifact can have: it never reaches the database)."""
    if not NAME.fullmatch(name):  # a NUL in the name would fail the statement, not find nothing
        return None
    cur = await conn.execute(GET_ARTIFACT, (job_id, name))
    row = await cur.fetchone()
    return None if row is None else Artifact(str(row[0]), str(row[1]), bytes(row[2]))
