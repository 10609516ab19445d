"""Handlers for the shutdown subprocess test: a `def` handler that ignores everything for a minute."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from worker import Context, handler


@handler("stuck_sync", visibility_timeout=300)
def stuck_sync(payload: dict[str, Any], ctx: Context) -> None:
    """Announce the start in a file, then block its thread far past any shutdown grace."""
    Path(payload["started"]).write_text(str(ctx.msg_id))
    time.sleep(60)
