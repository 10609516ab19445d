"""Durations: `timedelta` end to end, from the settings to the SQL. The one normaliser.

Wherever a caller may give a duration as a number of seconds (`@handler(timeout=30)`,
`enqueue(..., delay=1.5)`, `PGMQ_WORKER_POLL_INTERVAL=0.5`), it becomes a `timedelta` here, and a
value that is no duration (NaN, infinity, a string, past timedelta's range) is refused with a
ValueError naming `what`, which callers turn into their own error class. Text a person types
(`--since 1h`, `PGMQ_WORKER_POLL_INTERVAL=500ms`) is read here too (`parse`): seconds, numbers
with units (`90s`, `15m`, `1h30m`, `2d`), ISO 8601 (`PT1H`) or `HH:MM:SS`.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, TypeAdapter, ValidationError

# The shortest period of a loop (polling, heartbeats, keepalives, backoff): `Interval` settings
# refuse less, since 0 or a negative period would spin.
MIN_INTERVAL: Final = timedelta(milliseconds=10)

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


UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_WITH_UNITS = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_PYDANTIC: Final = TypeAdapter(timedelta)
MAX_TEXT: Final = 64  # longer is no duration anyone typed
SPELLINGS: Final = "seconds (90), a number with units (90s, 15m, 1h30m, 2d), ISO 8601 (PT1H) or HH:MM:SS"


def _units(text: str) -> float | None:
    """The seconds `1h30m` spells, or None when it is not numbers with units."""
    compact = text.replace(" ", "").lower()
    if not _WITH_UNITS.fullmatch(compact):
        return None
    return sum(float(n) * UNITS[unit] for n, unit in _PART.findall(compact))


def parse(text: str, what: str = "duration") -> timedelta:
    """A duration a person typed (see the module's docstring); ValueError naming `what` otherwise."""
    stripped = text.strip()
    if len(stripped) > MAX_TEXT:
        raise ValueError(f"{what} must be {SPELLINGS}, got {text[:MAX_TEXT]!r}...")
    try:
        seconds: float | None = float(stripped)
    except ValueError:
        seconds = _units(stripped)
    if seconds is not None:
        return as_timedelta(seconds, what)
    try:
        return _PYDANTIC.validate_python(stripped)
    except (ValidationError, OverflowError):
        raise ValueError(f"{what} must be {SPELLINGS}, got {text!r}") from None


def _from_setting(value: Any) -> Any:
    """Let `PGMQ_WORKER_POLL_INTERVAL=0.5` mean half a second and `=500ms` too (see `parse`)."""
    if isinstance(value, str):
        return parse(value, "a duration setting")
    return value


Duration = Annotated[timedelta, BeforeValidator(_from_setting)]
"""A duration setting: seconds (`0.5`), with a unit (`7d`, `12h`), ISO 8601 (`PT30S`) or `HH:MM:SS`."""


def _at_least(minimum: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise ValueError(
                f"must be at least {minimum.total_seconds():g} s, got {value.total_seconds():g} s"
            )
        return value

    return AfterValidator(check)


NonNegative = Annotated[timedelta, BeforeValidator(_from_setting), _at_least(timedelta(0))]
"""A Duration setting that may be 0 (a grace, a cache's age) but not negative."""

Interval = Annotated[timedelta, BeforeValidator(_from_setting), _at_least(MIN_INTERVAL)]
"""A Duration setting that is a loop's period or a timeout: at least MIN_INTERVAL."""
