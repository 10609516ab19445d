"""Handlers for the dashboard's browser tests: `pgmq-worker dev --import tests.support.dashboard_handlers`.

`dash_greet` answers at once; `dash_slow` runs until cancelled (steps and progress on the way);
`dash_flaky` fails permanently until the file its payload names exists, so a test can make a dead
letter, create the file, replay it, and see the job succeed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from worker import Context, Permanent, handler

GREET: Final = "dash_greet"
SLOW: Final = "dash_slow"
FLAKY: Final = "dash_flaky"


@handler(GREET)
async def greet(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
    """Say hello."""
    return {"hello": str(payload.get("name", "world"))}


@handler(SLOW, visibility_timeout=30, timeout=120)
async def slow(payload: dict[str, Any], ctx: Context) -> dict[str, int]:
    """Tick every 0.2 s for `seconds` (default 60), reporting progress."""
    seconds = float(payload.get("seconds", 60))
    ticks = max(1, int(seconds / 0.2))
    for tick in range(ticks):
        await ctx.progress(min(99, tick * 100 // ticks), step="ticking")
        await asyncio.sleep(0.2)
    return {"ticks": ticks}


@handler(FLAKY, max_attempts=1)
def flaky(payload: dict[str, Any], ctx: Context) -> dict[str, bool]:
    """Fail (Permanent) unless the file at payload['unless'] exists."""
    if not Path(str(payload["unless"])).exists():
        raise Permanent(f"the file {payload['unless']} is not there yet")
    return {"ok": True}
