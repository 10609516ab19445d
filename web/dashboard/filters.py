"""The jobs page's query string: each filter checked, a clear 400 for anything else (never a 500)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode
from uuid import UUID

from starlette.datastructures import QueryParams

from queues.errors import InvalidQueueName
from queues.job_list import MAX_PAGE, STATUSES, Cursor, JobFilter
from queues.names import validate_queue_name

FIELDS: Final = ("queue", "status", "owner", "since", "until", "error")
MAX_ERROR_TEXT: Final = 200
DEFAULT_LIMIT: Final = 50
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


class BadFilter(ValueError):
    """A filter value the jobs page cannot use; its message says which and why."""


@dataclass(frozen=True, slots=True)
class JobQuery:
    """The parsed query string of /dashboard/jobs."""

    where: JobFilter
    raw: dict[str, str]  # the filters as typed, to fill the form again
    limit: int = DEFAULT_LIMIT
    before: Cursor | None = None
    after: Cursor | None = None

    def link(self, **cursor: str) -> str:
        """This query's URL with another page cursor (`before=` or `after=`)."""
        params = {k: v for k, v in self.raw.items() if v}
        if self.limit != DEFAULT_LIMIT:
            params["limit"] = str(self.limit)
        return "?" + urlencode({**params, **cursor})


def _time(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadFilter(f"{name}: {text[:40]!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    if not EARLIEST <= value < LATEST:
        raise BadFilter(f"{name}: {text[:40]!r} is out of range")
    return value


def _cursor(name: str, text: str) -> Cursor:
    try:
        return Cursor.decode(text)
    except (ValueError, OverflowError):
        raise BadFilter(f"{name}: not a page cursor (follow the page links)") from None


def _queue(text: str) -> str:
    try:
        return validate_queue_name(text)
    except InvalidQueueName as exc:
        raise BadFilter(f"queue: {exc}") from None


def _status(text: str) -> str:
    if text not in STATUSES:
        raise BadFilter(f"status: {text[:40]!r} is not one of {', '.join(STATUSES)}")
    return text


def _owner(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise BadFilter(f"owner: {text[:40]!r} is not a user id (a UUID)") from None


def _error(text: str) -> str:
    if len(text) > MAX_ERROR_TEXT or "\x00" in text:
        raise BadFilter(f"error: at most {MAX_ERROR_TEXT} characters of text")
    return text


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 4 or not 1 <= int(text) <= MAX_PAGE:
        raise BadFilter(f"limit: a whole number from 1 to {MAX_PAGE}")
    return int(text)


def parse(params: QueryParams) -> JobQuery:
    """The filters of a jobs page URL; BadFilter naming the first bad one."""
    raw = {name: params.get(name, "").strip() for name in FIELDS}
    since = _time("since", raw["since"]) if raw["since"] else None
    until = _time("until", raw["until"]) if raw["until"] else None
    if since and until and since >= until:
        raise BadFilter("since must be before until")
    where = JobFilter(
        queue=_queue(raw["queue"]) if raw["queue"] else None,
        status=_status(raw["status"]) if raw["status"] else None,
        owner=_owner(raw["owner"]) if raw["owner"] else None,
        since=since,
        until=until,
        error=_error(raw["error"]) if raw["error"] else None,
    )
    limit = _limit(params["limit"]) if params.get("limit") else DEFAULT_LIMIT
    before = _cursor("before", params["before"]) if params.get("before") else None
    after = _cursor("after", params["after"]) if params.get("after") else None
    if before and after:
        raise BadFilter("before and after cannot both be given")
    return JobQuery(where, raw, limit, before, after)
