"""Periodic jobs declared beside their handlers: a nightly report in Berlin time, a ten-second sweep."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Final

from pydantic import BaseModel, ConfigDict

from queues import Contract
from worker import Context, handler, schedule


class ReportWanted(BaseModel):
    """Which report to build."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str


REPORTS: Final = Contract("reports", ReportWanted)

# 03:00 in Berlin every day; the payload is checked against ReportWanted right here, at import.
schedule(REPORTS, "0 3 * * *", payload={"kind": "nightly"}, name="nightly-report", timezone="Europe/Berlin")
# Every ten seconds (six fields: seconds first); after downtime, every missed tick of the last minute.
schedule("sweeps", "*/10 * * * * *", name="sweep", catch_up=timedelta(minutes=1))


@handler(REPORTS)
async def report(payload: ReportWanted, ctx: Context) -> dict[str, str]:
    """Build the report for the day before the tick (sent by hand: the day before today)."""
    tick = ctx.scheduled_at  # None for a message no schedule sent
    day = (tick.date() if tick is not None else date.today()) - timedelta(days=1)
    return {"kind": payload.kind, "day": day.isoformat()}


@handler("sweeps")
async def sweep(payload: dict[str, object], ctx: Context) -> None:
    """Tidy up; a sweep that finds nothing to do is fine."""
