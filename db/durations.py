"""Durations: `timedelta` end to end, from the settings to the SQL. The one normaliser.

Wherever a caller may give a duration as a number of seconds (`@handler(timeout=30)`,
`enqueue(..., delay=1.5)`, `PGMQ_WORKER_POLL_INTERVAL=0.5`), it becomes a `timedelta` here, and a
value that is no duration (NaN, infinity, a string, past timedelta's range) is refused with a
ValueError naming `what`, which callers turn into their own error class.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

Seconds = float | timedelta
"""A duration as callers may write it: seconds (an int or float) or a timedelta."""


def as_timedelta(value: Seconds, what: str = "duration") -> timedelta:
    """`value` (seconds or a timedelta) as a timedelta; ValueError if it is not a finite duration."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        # ValueError, not TypeError: each caller turns a ValueError into its own error class.
        raise ValueError(f"{what} must be a number of seconds or a timedelta, got {value!r}")  # noqa: TRY004
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise ValueError(f"{what} is too long, got {value!r}") from None


def positive(value: Seconds, what: str) -> timedelta:
    """`value` as a timedelta; ValueError unless it is longer than zero."""
    result = as_timedelta(value, what)
    if result <= timedelta(0):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return result


def non_negative(value: Seconds, what: str) -> timedelta:
    """`value` as a timedelta; ValueError if it is below zero."""
    result = as_timedelta(value, what)
    if result < timedelta(0):
        raise ValueError(f"{what} must not be negative, got {result.total_seconds()}")
    return result


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WITH_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)


def parse(text: str, what: str = "duration") -> timedelta:
    """`7d`, `12h`, `30m`, `45s`, `2w` or plain seconds (`90`, `0.5`) as a timedelta; ValueError else."""
    found = WITH_UNIT.fullmatch(text)
    if found:
        return as_timedelta(float(found[1]) * UNITS[found[2].lower()], what)
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(
            f"{what} must be a number of seconds or like 7d, 12h, 30m, 45s, got {text!r}"
        ) from None
    return non_negative(seconds, what)


def _from_setting(value: Any) -> Any:
    """Let `PGMQ_WORKER_POLL_INTERVAL=0.5` mean half a second, `PGMQ_WORKER_RETENTION=7d` a week."""
    if isinstance(value, str):
        if WITH_UNIT.fullmatch(value):
            return parse(value, "a duration setting")
        try:
            seconds = float(value)
        except ValueError:
            return value  # ISO 8601 ("PT30S") and "HH:MM:SS" still go to pydantic
        return as_timedelta(seconds, "a duration setting")
    return value


Duration = Annotated[timedelta, BeforeValidator(_from_setting)]
"""A duration setting: seconds (`0.5`), with a unit (`7d`, `12h`), ISO 8601 (`PT30S`) or `HH:MM:SS`."""
