"""Handlers for the runtime hardening CLI tests: `pgmq-worker run --import tests.support.runtime_handlers`.

`rt_mixed` does what its payload's `kind` says: succeed, return a result Postgres refuses, raise,
or call sys.exit(). With PGMQW_TEST_BREAK_LEASES=1 in the environment (a test's own switch,
read here, never by the worker) this module breaks the worker's lease renewer as it is imported,
so a test can watch a side task die in a real `pgmq-worker run`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Final

from worker import Context, handler
from worker.leases import Leases

MIXED: Final = "rt_mixed"
GUARDED: Final = "rt_guarded"


@handler(MIXED, max_attempts=1)
async def mixed(payload: dict[str, Any], ctx: Context) -> Any:
    """Steered by payload["kind"]: ok, nul (a result with a NUL), raise, exit."""
    kind = payload["kind"]
    if kind == "nul":
        return {"text": "scanned\x00page"}
    if kind == "raise":
        raise RuntimeError("this job fails")
    if kind == "exit":
        sys.exit(3)
    return {"ok": payload["n"]}


@handler(GUARDED)
async def guarded(payload: dict[str, Any], ctx: Context) -> None:
    """Holds its delivery (and so a lease) for a while."""
    await asyncio.sleep(payload.get("sleep", 30))


if os.environ.get("PGMQW_TEST_BREAK_LEASES") == "1":
    renew_due = Leases.renew_due

    async def broken_renewal(self: Leases) -> None:
        """The renewer dies of a bug nobody expected, once it holds a lease."""
        if len(self):
            raise RuntimeError("lease renewer bug")
        await renew_due(self)

    Leases.renew_due = broken_renewal  # type: ignore[method-assign]
