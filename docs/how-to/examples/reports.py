"""Urgent and bulk work of one kind: two queues, one handler, the urgent one read first."""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from queues import Contract
from worker import Context, handler


class ReportRequested(BaseModel):
    """A report to build for one account."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    account_id: str = Field(min_length=1, max_length=100)


# --8<-- [start:queues]
REPORT_URGENT: Final = Contract("report_urgent", ReportRequested)  # a user waits for it
REPORT_BULK: Final = Contract("report_bulk", ReportRequested)  # the nightly run for every account


@handler(REPORT_URGENT, priority=10)  # read first whenever a slot is free
@handler(REPORT_BULK, concurrency=4)  # at most 4 at once per worker process: slots stay free
async def build_report(payload: ReportRequested, ctx: Context) -> dict[str, str]:
    """Build one account's report (whichever queue it came from)."""
    return {"account_id": payload.account_id, "queue": ctx.queue}


# --8<-- [end:queues]
