"""The registry's acceptance handlers: `pgmq-worker run --import tests.support.registry_handlers`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from worker import Context, handler

HELD: Final = "reg_held"


@handler(HELD, visibility_timeout=30)
async def held(payload: dict[str, Any], ctx: Context) -> None:
    """Run until the payload's `release` file exists (at most 25 s): a job the test keeps in flight."""
    release = Path(payload["release"])
    for _ in range(500):
        if await asyncio.to_thread(release.exists):
            return
        await asyncio.sleep(0.05)
