"""One of each mechanism: the one Backoff, the one duration normaliser, the one one-line error.

No database: these are the pure parts every other module leans on.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from db import durations
from db.backoff import Backoff, jittered, reconnect_backoff, reconnect_delay
from db.errors import one_line
from db.settings import DatabaseSettings
from queues.enqueue import delay_seconds
from queues.errors import InvalidPayload
from worker import Backoff as ExportedBackoff
from worker.settings import WorkerSettings


def test_worker_exports_the_one_backoff() -> None:
    """`from worker import Backoff` (the README's) is db.backoff's class, not a copy."""
    assert ExportedBackoff is Backoff


@given(failures=st.integers(min_value=1, max_value=10_000), cap=st.floats(min_value=0.01, max_value=3600))
@example(failures=1, cap=0.0546875)
def test_reconnect_delay_doubles_capped_and_half_jittered(failures: int, cap: float) -> None:
    """The reconnect wait lies between half and all of min(cap, 0.25 s * 2**failures), the cap
    taken to the microsecond as every duration setting is (0.0546875 s is 0.054688 s)."""
    ceiling = min(timedelta(seconds=cap).total_seconds(), 0.25 * 2.0 ** min(failures, 64))
    delay = reconnect_delay(failures, cap)
    assert ceiling * 0.5 <= delay <= ceiling
    assert reconnect_backoff(timedelta(seconds=cap)).ceiling(failures) == pytest.approx(ceiling)


@given(seconds=st.floats(min_value=0, max_value=1e6), jitter=st.floats(min_value=0, max_value=1))
def test_jitter_only_takes_off(seconds: float, jitter: float) -> None:
    """A jittered wait is never longer than asked, and never shorter than (1 - jitter) of it."""
    value = jittered(seconds, jitter, random.Random(seconds))
    assert seconds * (1 - jitter) - 1e-9 <= value <= seconds


def test_a_backoff_base_may_be_a_timedelta() -> None:
    """`@handler(backoff=timedelta(seconds=5))` is a 5 s base, as `backoff=5` is."""
    assert Backoff.of(timedelta(seconds=5)) == Backoff.of(5) == Backoff(base=5.0)


@given(seconds=st.floats(min_value=-1e6, max_value=1e6))
def test_durations_round_trip_seconds(seconds: float) -> None:
    """A number of seconds and its timedelta normalise to the same timedelta."""
    assert durations.as_timedelta(seconds) == durations.as_timedelta(timedelta(seconds=seconds))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300, "5", True, None])
def test_a_value_that_is_no_duration_is_refused(bad: object) -> None:
    """NaN, infinity, a number past timedelta's range, a string, a bool: a ValueError naming the field."""
    with pytest.raises(ValueError, match="poll"):
        durations.as_timedelta(bad, "poll")  # type: ignore[arg-type]


def test_positive_and_non_negative_say_what_is_wrong() -> None:
    """The messages the handler, fan-out and enqueue checks have always given."""
    with pytest.raises(ValueError, match="timeout must be positive, got 0"):
        durations.positive(0, "timeout")
    with pytest.raises(ValueError, match=r"delay must not be negative, got -1.5"):
        durations.non_negative(-1.5, "delay")
    assert durations.positive(timedelta(milliseconds=1), "timeout") == timedelta(milliseconds=1)
    assert durations.non_negative(0, "delay") == timedelta(0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300])
def test_an_enqueue_delay_that_is_no_duration_is_invalid_payload(bad: float) -> None:
    """enqueue(..., delay=nan/inf) is the caller's mistake: InvalidPayload, not a ValueError from round()."""
    with pytest.raises(InvalidPayload, match="delay"):
        delay_seconds(bad)


@pytest.mark.parametrize("value", ["inf", "nan", "1e300"])
def test_a_duration_setting_that_is_no_duration_is_an_invalid_setting(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGMQ_WORKER_POLL_INTERVAL=inf is an invalid setting, not an OverflowError."""
    monkeypatch.setenv("PGMQ_WORKER_POLL_INTERVAL", value)
    monkeypatch.setenv("PGMQ_WORKER_CONNECT_TIMEOUT", value)
    with pytest.raises(ValidationError, match="poll_interval"):
        WorkerSettings()
    with pytest.raises(ValidationError, match="connect_timeout"):
        DatabaseSettings()


def test_duration_settings_still_read_seconds_and_iso() -> None:
    """`0.5`, `PT30S` and `00:01:00` all remain durations."""
    assert WorkerSettings(poll_interval="0.5").poll_interval == timedelta(seconds=0.5)  # type: ignore[arg-type]
    assert WorkerSettings(poll_interval="PT30S").poll_interval == timedelta(seconds=30)  # type: ignore[arg-type]
    assert WorkerSettings(poll_interval="00:01:00").poll_interval == timedelta(minutes=1)  # type: ignore[arg-type]


@given(text=st.text(), secret=st.text(min_size=8).filter(lambda s: s.strip() == s and s.isprintable()))
def test_one_line_is_one_line_without_the_secret(text: str, secret: str) -> None:
    """Whatever the message, the helper gives one line, and the secret is masked before it is cut."""
    line = one_line(RuntimeError(f"{text} {secret}\n{secret} more"), (secret,))
    assert len(line.splitlines()) <= 1
    assert secret not in line


def test_one_line_names_the_class_of_an_empty_error() -> None:
    """An exception without a message still says what it was."""
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(ValueError("first\nsecond\nthird"), lines=2) == "first second"
