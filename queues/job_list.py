"""Listing job rows for the dashboard: filters and keyset pagination, newest first.

A page is `ORDER BY created_at DESC, id DESC LIMIT n` after the last row of the previous page
(`(created_at, id) < cursor`), never an OFFSET, so page 5,000 costs what page 1 costs; migration
0021 holds the indexes each filter uses (bench/dashboard_pages.py measures them at 1M rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row

STATUSES: Final = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
MAX_PAGE: Final = 200
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND: Final = timedelta(microseconds=1)

SUMMARY_COLUMNS = (
    "SELECT id, queue, status, progress, step, attempts, owner, created_at, started_at, finished_at,"
    " error->>'type' AS error_type, left(error->>'message', 300) AS error_message"
)
SUMMARY = sql.SQL(SUMMARY_COLUMNS + " FROM pgmq_worker.jobs")
# Each filter is one fixed fragment; values only ever travel as parameters.
WHERE: Final = {
    "queue": sql.SQL("queue = %(queue)s"),
    "status": sql.SQL("status = %(status)s"),
    "owner": sql.SQL("owner = %(owner)s"),
    "since": sql.SQL("created_at >= %(since)s"),
    "until": sql.SQL("created_at < %(until)s"),
    # `error IS NOT NULL` lets the planner use the partial indexes of migration 0021; the text is
    # the expression jobs_error_text_idx (trigrams) indexes, spelled the same.
    "error": sql.SQL(
        "error IS NOT NULL AND (coalesce(error->>'type', '') || ': ' || coalesce(error->>'message', ''))"
        " ILIKE %(error)s"
    ),
    "before": sql.SQL("(created_at, id) < (%(cursor_at)s, %(cursor_id)s)"),
    "after": sql.SQL("(created_at, id) > (%(cursor_at)s, %(cursor_id)s)"),
}
NEWEST_FIRST = sql.SQL(" ORDER BY created_at DESC, id DESC LIMIT %(limit)s")
# Text in the error, first try: the newest ERRORED_BUDGET errored rows (an ordered read of
# jobs_errored_created_idx) searched for the text. A common word fills the page from those; only
# otherwise, and only when there were more errored rows than that (ERRORED_COUNT), does the page
# take the trigram index (jobs_error_text_idx), which is fast for rare
# words but, as the planner cannot tell common from rare, slow for a word in a fifth of the rows.
ERRORED_BUDGET: Final = 500
ERRORED_COUNT = sql.SQL(
    "SELECT count(*) FROM ({recent} ORDER BY created_at DESC, id DESC LIMIT %(budget)s) AS recent"
)
ERRORED_FIRST = sql.SQL(
    "SELECT id, queue, status, progress, step, attempts, owner, created_at, started_at, finished_at,"
    " error_type, error_message"
    " FROM ({recent} ORDER BY created_at DESC, id DESC LIMIT %(budget)s) AS recent"
    " WHERE error_text ILIKE %(error)s ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
)
RECENT_ERRORED = sql.SQL(
    SUMMARY_COLUMNS
    + ", (coalesce(error->>'type', '') || ': ' || coalesce(error->>'message', '')) AS error_text"
    " FROM pgmq_worker.jobs"
)
OLDEST_FIRST = sql.SQL(" ORDER BY created_at ASC, id ASC LIMIT %(limit)s")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the list: the (created_at, id) of a row, as `<microseconds>.<hex id>` in URLs."""

    created_at: datetime
    id: UUID

    def encode(self) -> str:
        """The URL form; exact to the microsecond (no float on the way)."""
        return f"{(self.created_at - EPOCH) // MICROSECOND}.{self.id.hex}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse the URL form; ValueError when it is not one."""
        micros, dot, hex_id = text.partition(".")
        if not dot or not (micros.isascii() and micros.isdigit()) or len(micros) > 17 or len(hex_id) != 32:
            raise ValueError(f"{text[:80]!r} is not a page cursor")
        return cls(EPOCH + int(micros) * MICROSECOND, UUID(hex=hex_id))


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs to list; None is "any"."""

    queue: str | None = None
    status: str | None = None
    owner: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    error: str | None = None  # a substring of "<type>: <message>", case-insensitive

    def active(self) -> dict[str, Any]:
        """The set filters by name."""
        return {
            k: v for k in ("queue", "status", "owner", "since", "until", "error") if (v := getattr(self, k))
        }


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One row of the list."""

    id: UUID
    queue: str
    status: str
    progress: int
    step: str | None
    attempts: int
    owner: UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error_type: str | None
    error_message: str | None

    @property
    def cursor(self) -> Cursor:
        """This row's position."""
        return Cursor(self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class JobPage:
    """A page of rows, newest first, and whether there are older and newer rows beyond it."""

    rows: list[JobSummary] = field(default_factory=list)
    older: Cursor | None = None  # pass as `before` for the next page
    newer: Cursor | None = None  # pass as `after` for the previous page


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards and escape character taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page_query(
    where: JobFilter, limit: int, before: Cursor | None = None, after: Cursor | None = None
) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement and parameters for one page (one row more than `limit`, to know if there is more)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"a page holds 1 to {MAX_PAGE} rows, not {limit}")
    params: dict[str, Any] = dict(where.active())
    if "error" in params:
        params["error"] = like_pattern(params["error"])
    parts = [WHERE[name] for name in params]
    cursor = before or after
    if cursor is not None:
        parts.append(WHERE["before" if before is not None else "after"])
        params.update(cursor_at=cursor.created_at, cursor_id=cursor.id)
    params["limit"] = limit + 1
    query: sql.Composable = SUMMARY
    if parts:
        query = sql.Composed([query, sql.SQL(" WHERE "), sql.SQL(" AND ").join(parts)])
    order = OLDEST_FIRST if after is not None and before is None else NEWEST_FIRST
    return sql.Composed([query, order]), params


def errored_first_query(
    where: JobFilter, limit: int, before: Cursor | None = None
) -> tuple[sql.Composed, sql.Composed, dict[str, Any]] | None:
    """The bounded first try for a text-in-the-error page (newest first only), and the count that
    tells whether it read every errored row; None without that filter."""
    if where.error is None:
        return None
    others = JobFilter(where.queue, where.status, where.owner, where.since, where.until)
    params: dict[str, Any] = dict(others.active())
    params.update(error=like_pattern(where.error), budget=ERRORED_BUDGET, limit=limit + 1)
    conditions = [sql.SQL("error IS NOT NULL"), *(WHERE[name] for name in others.active())]
    if before is not None:
        conditions.append(WHERE["before"])
        params.update(cursor_at=before.created_at, cursor_id=before.id)
    recent = sql.Composed([RECENT_ERRORED, sql.SQL(" WHERE "), sql.SQL(" AND ").join(conditions)])
    return ERRORED_FIRST.format(recent=recent), ERRORED_COUNT.format(recent=recent), params


def _read(row: tuple[Any, ...] | None) -> int:
    return int(row[0]) if row else 0


def _page(rows: list[JobSummary], limit: int, before: Cursor | None, after: Cursor | None) -> JobPage:
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None and before is None:  # read oldest first from the cursor: turn around
        rows.reverse()
        return JobPage(rows, rows[-1].cursor if rows else after, rows[0].cursor if more and rows else None)
    older = rows[-1].cursor if more and rows else None
    newer = rows[0].cursor if rows and before is not None else None
    return JobPage(rows, older, newer)


def list_jobs(
    conn: psycopg.Connection[Any],
    where: JobFilter,
    limit: int = 50,
    *,
    before: Cursor | None = None,
    after: Cursor | None = None,
) -> JobPage:
    """One page of jobs matching `where`, newest first, older than `before` or newer than `after`."""
    first = errored_first_query(where, limit, before) if after is None else None
    with conn.cursor(row_factory=class_row(JobSummary)) as cur:
        if first is not None:
            query, count, params = first
            rows = cur.execute(query, params).fetchall()
            if len(rows) > limit or _read(conn.execute(count, params).fetchone()) < ERRORED_BUDGET:
                return _page(rows, limit, before, after)  # a full page, or every errored row read
        rows = cur.execute(*page_query(where, limit, before, after)).fetchall()
    return _page(rows, limit, before, after)


async def alist_jobs(
    conn: psycopg.AsyncConnection[Any],
    where: JobFilter,
    limit: int = 50,
    *,
    before: Cursor | None = None,
    after: Cursor | None = None,
) -> JobPage:
    """One page of jobs matching `where` (async)."""
    first = errored_first_query(where, limit, before) if after is None else None
    async with conn.cursor(row_factory=class_row(JobSummary)) as cur:
        if first is not None:
            query, count, params = first
            await cur.execute(query, params)
            rows = await cur.fetchall()
            if (
                len(rows) > limit
                or _read(await (await conn.execute(count, params)).fetchone()) < ERRORED_BUDGET
            ):
                return _page(rows, limit, before, after)  # a full page, or every errored row read
        await cur.execute(*page_query(where, limit, before, after))
        rows = await cur.fetchall()
    return _page(rows, limit, before, after)
