"""Shared limits: concurrency and rate hold across tasks and survive crashed holders.

The test across two worker processes is in test_acceptance.py (it needs worker subprocesses).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from db.connect import Target, async_pool
from worker import Limit
from worker.errors import HandlerRegistrationError
from worker.limits import hold


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"concurrency": 0}, {"concurrency": 1.5}, {"per_minute": 0}, {"per_minute": 5, "hold_s": 0}],
)
def test_bad_limits_are_refused(kwargs: dict[str, Any]) -> None:
    """A limit needs a positive concurrency and/or rate."""
    with pytest.raises(HandlerRegistrationError):
        Limit("api", **kwargs)


def run_holders(target: Target, limit: Limit, holders: int, work_s: float) -> tuple[int, list[float]]:
    """`holders` tasks each hold `limit` for `work_s`; the peak held at once and each entry time."""
    active, peak, entered = 0, 0, []

    async def one(pool: Any) -> None:
        nonlocal active, peak
        async with hold(pool, limit):
            entered.append(time.monotonic())
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(work_s)
            active -= 1

    async def go() -> None:
        pool = async_pool(target, min_size=1, max_size=8)
        await pool.open()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(pool) for _ in range(holders))), 60)
        finally:
            await pool.close()

    asyncio.run(go())
    return peak, sorted(entered)


def test_concurrency_is_capped(target: Target) -> None:
    """Eight holders of a concurrency-2 limit: never more than two at once, all of them served."""
    peak, entered = run_holders(target, Limit("pair", concurrency=2), 8, 0.15)
    assert peak == 2 and len(entered) == 8


def test_rate_is_capped(target: Target) -> None:
    """600 a minute (10 a second, bursts of a second's share): 25 entries take at least 1.5 s."""
    _, entered = run_holders(target, Limit("rate", per_minute=600), 25, 0)
    span = entered[-1] - entered[0]
    assert 1.4 <= span <= 6, span
    for i, start in enumerate(entered):  # any one-second window holds at most 10 + the burst
        assert sum(1 for t in entered[i:] if t - start < 1.0) <= 20


def test_a_crashed_holders_slot_comes_back_after_hold_s(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """A hold whose holder died (never released) blocks only until it expires."""
    limit = Limit("solo", concurrency=1, hold_s=600)
    run_holders(target, limit, 1, 0)  # creates the limit row
    conn.execute(
        "INSERT INTO pgmq_worker.limit_holds"
        " VALUES ('solo', gen_random_uuid(), clock_timestamp() + interval '1 s')"
    )
    started = time.monotonic()
    run_holders(target, limit, 1, 0)
    assert 0.8 <= time.monotonic() - started <= 5
