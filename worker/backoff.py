"""Retry delays: exponential, capped, with jitter so a failing fleet does not retry in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


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
        ceiling = self.ceiling(attempt)
        draw = (rng or _rng).random()
        return ceiling * (1 - self.jitter * draw)

    @classmethod
    def of(cls, value: Backoff | float | timedelta | None) -> Backoff:
        """Accept a Backoff, or a base delay in seconds/timedelta with the default shape."""
        if value is None:
            return cls()
        if isinstance(value, Backoff):
            return value
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        return cls(base=seconds)


_rng = random.Random()  # noqa: S311  jitter is not security-sensitive
