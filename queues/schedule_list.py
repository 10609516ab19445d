"""The dashboard's schedules page: the schedules workers declared (migration 0022) and their last tick."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

SCHEDULES = """
SELECT s.name, s.queue, s.cron, s.timezone, s.catch_up, s.declared_at,
    t.tick AS last_tick, t.job_id AS last_job, j.status AS last_status,
    (SELECT count(*) FROM pgmq_worker.schedule_ticks AS d
     WHERE d.schedule = s.name AND d.tick >= now() - interval '1 day') AS ticks_last_day
FROM pgmq_worker.schedules AS s
LEFT JOIN LATERAL (SELECT tick, job_id FROM pgmq_worker.schedule_ticks AS k
                   WHERE k.schedule = s.name ORDER BY tick DESC LIMIT 1) AS t ON true
LEFT JOIN pgmq_worker.jobs AS j ON j.id = t.job_id
ORDER BY s.name
"""


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One declared schedule and its newest tick."""

    name: str
    queue: str
    cron: str
    timezone: str
    catch_up: str
    declared_at: datetime
    last_tick: datetime | None
    last_job: UUID | None
    last_status: str | None
    ticks_last_day: int


async def aschedules(conn: psycopg.AsyncConnection[Any]) -> list[ScheduleRow]:
    """Every declared schedule, by name, with its newest tick and its job's status."""
    async with conn.cursor(row_factory=class_row(ScheduleRow)) as cur:
        await cur.execute(SCHEDULES)
        return await cur.fetchall()
