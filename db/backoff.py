"""Backoff with jitter: the one implementation, for retries, reconnects, restarts and waits.

Exponential and capped, with jitter taken off so a failing fleet does not retry in lockstep.
It lives in db/ so the LISTEN connection (db.listen) can use it; `worker` exports it for
`@handler(backoff=...)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from db.durations import Seconds, as_timedelta

_rng = random.Random()  # noqa: S311  jitter is not security-sensitive


@dataclass(frozen=True, slots=True)
class Backoff:
    """delay(attempt) = min(cap, base * factor**(attempt-1)), less up to `jitter` of itself."""

    base: float = 2.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.25  # fraction of the delay randomly taken off: 0 gives exact delays

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be non-negative")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter after the given (1-based) failed attempt."""
        try:
            grown = self.base * self.factor ** (max(attempt, 1) - 1)
        except OverflowError:  # attempt in the thousands: long past the cap anyway
            grown = float("inf")
        return float(min(self.cap, grown))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt."""
        return jittered(self.ceiling(attempt), self.jitter, rng)

    @classmethod
    def of(cls, value: Backoff | Seconds | None) -> Backoff:
        """Accept a Backoff, or a base delay in seconds/timedelta with the default shape."""
        if value is None:
            return cls()
        if isinstance(value, Backoff):
            return value
        return cls(base=as_timedelta(value, "backoff").total_seconds())


def jittered(seconds: float, jitter: float, rng: random.Random | None = None) -> float:
    """`seconds` less a random part of up to `jitter` of it (0 gives exactly `seconds`)."""
    return seconds * (1 - jitter * (rng or _rng).random())


def reconnect_backoff(cap: Seconds) -> Backoff:
    """Reconnecting to the database: 0.5 s after the first failure, doubling up to `cap`, half jittered."""
    return Backoff(base=0.5, factor=2.0, cap=as_timedelta(cap, "reconnect cap").total_seconds(), jitter=0.5)


def reconnect_delay(failures: int, cap: Seconds) -> float:
    """Seconds to wait after `failures` consecutive failures to reach the database (reconnect_backoff)."""
    return reconnect_backoff(cap).delay(failures)
