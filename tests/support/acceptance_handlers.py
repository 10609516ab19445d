"""Handlers for the subprocess acceptance tests: `pgmq-worker run --import tests.support.acceptance_handlers`.

Each handler is steered by its payload and appends `<event> <key> <attempt>` lines to the payload's
`marker` file, so a test can see from outside the process which attempts ran and how far.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import BaseModel, ConfigDict

from worker import Context, Limit, handler

JOBS: Final = "acc_jobs"
ORDERS: Final = "acc_orders"
CRASH: Final = "acc_crash"
SYNC_SLOW: Final = "acc_sync_slow"

# The smallest visibility timeout the worker accepts: redelivery after a kill takes ~2 s.
VISIBILITY_TIMEOUT_S: Final = 2
ORDERS_MAX_ATTEMPTS: Final = 5
CRASH_MAX_ATTEMPTS: Final = 3
CRASH_EXIT_CODE: Final = 70


def mark(marker: str, event: str, key: object, attempt: int) -> None:
    """Append one `<event> <key> <attempt>` line; the file is closed before anything else runs."""
    with Path(marker).open("a", encoding="utf-8") as f:
        f.write(f"{event} {key} {attempt}\n")


def pause_for(payload: dict[str, Any], attempt: int) -> float:
    """The seconds this attempt sleeps: `sleeps[attempt - 1]`, the last entry repeating."""
    sleeps = payload.get("sleeps") or [0]
    return float(sleeps[min(attempt, len(sleeps)) - 1])


@handler(JOBS, visibility_timeout=VISIBILITY_TIMEOUT_S, max_attempts=5, backoff=0.1)
async def job(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Mark the start, sleep as the payload says for this attempt, mark the end."""
    mark(payload["marker"], "start", payload["key"], ctx.attempt)
    await asyncio.sleep(pause_for(payload, ctx.attempt))
    mark(payload["marker"], "done", payload["key"], ctx.attempt)
    return {"key": payload["key"]}


@handler(SYNC_SLOW, visibility_timeout=VISIBILITY_TIMEOUT_S, max_attempts=5, backoff=0.1)
def sync_job(payload: dict[str, Any], ctx: Context) -> None:
    """The same as `job`, as a `def` handler: it runs in a thread, which no one can cancel."""
    mark(payload["marker"], "start", payload["key"], ctx.attempt)
    time.sleep(pause_for(payload, ctx.attempt))
    mark(payload["marker"], "done", payload["key"], ctx.attempt)


class Order(BaseModel):
    """A strict payload: anything else on the queue is poison."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    order_id: int
    marker: str


@handler(ORDERS, visibility_timeout=VISIBILITY_TIMEOUT_S, max_attempts=ORDERS_MAX_ATTEMPTS)
def order(payload: Order, ctx: Context) -> None:
    """Record that a valid order ran."""
    mark(payload.marker, "done", payload.order_id, ctx.attempt)


@handler(CRASH, visibility_timeout=VISIBILITY_TIMEOUT_S, max_attempts=CRASH_MAX_ATTEMPTS)
def crash(payload: dict[str, Any], ctx: Context) -> None:
    """Mark the attempt, then kill the whole worker process as a segfault or OOM kill would."""
    mark(payload["marker"], "start", payload["key"], ctx.attempt)
    os._exit(CRASH_EXIT_CODE)


STEPPED: Final = "acc_stepped"


@handler(
    STEPPED,
    visibility_timeout=VISIBILITY_TIMEOUT_S,
    max_attempts=5,
    backoff=0.1,
    steps=("fetch", "parse", "enrich", "store"),
)
async def stepped(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Four resumable steps; each marks its runs. `enrich` sleeps `sleeps[attempt - 1]` (kill it there)."""

    async def run(name: str, value: int) -> int:
        mark(payload["marker"], name, payload["key"], ctx.attempt)
        if name == "enrich":
            await asyncio.sleep(pause_for(payload, ctx.attempt))
        return value + 1

    a = await ctx.step("fetch", run, "fetch", 0)
    b = await ctx.step("parse", run, "parse", a)
    c = await ctx.step("enrich", run, "enrich", b)
    d = await ctx.step("store", run, "store", c)
    return {"value": d}


LIMITED: Final = "acc_limited"
API_LIMIT: Final = Limit("acc_api", concurrency=3, per_minute=300)  # 3 at once, 5 a second


@handler(LIMITED, visibility_timeout=30, max_attempts=3, backoff=0.1)
async def limited(payload: dict[str, Any], ctx: Context) -> int:
    """Call the test's local HTTP server (payload `url`) under the shared `acc_api` limit."""
    async with ctx.limit(API_LIMIT), httpx.AsyncClient() as client:
        response = await client.get(payload["url"], timeout=10)
    return response.status_code
