"""Handlers and an every-second schedule for the schedule tests: `--import tests.support.schedule_handlers`.

`sched_every` gets a message at every second's tick; its handler returns the tick it was sent
for (ctx.scheduled_at), so the job rows say which tick each job ran.
"""

from __future__ import annotations

from typing import Any, Final

from worker import Context, handler, schedule

EVERY: Final = "sched_every"

schedule(EVERY, "* * * * * *", payload={"from": "schedule"}, name="every-second")


@handler(EVERY, max_attempts=3)
async def every(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Return the tick this job was sent for."""
    return {"scheduled_at": None if ctx.scheduled_at is None else ctx.scheduled_at.isoformat(), **payload}
