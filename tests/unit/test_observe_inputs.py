"""Bad input at the edges of the registry and stats: `--since`, durations typed by people, settings.

No database: a `--since` that is no positive duration is refused by its callback, before the
command connects anywhere (exit status 2, click's usage error, naming the option).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from db import durations
from queues.stats import QueueStats
from worker.cli import main
from worker.outcome import DeadLetter, ErrorInfo, RetryLater, Succeeded, Waiting
from worker.presence import Presence, card_for
from worker.settings import WorkerSettings

UNITS = st.sampled_from(sorted(durations.UNITS))


def refused_at_all(text: str) -> bool:
    try:
        durations.parse(text, "--since")
    except ValueError:
        return True
    return False


def refused(text: str) -> bool:
    try:
        durations.positive(durations.parse(text, "--since"), "--since")
    except ValueError:
        return True
    return False


@given(text=st.text(max_size=80))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    """Whatever a person types, parse returns a timedelta or raises ValueError naming the option."""
    if refused_at_all(text):
        with pytest.raises(ValueError, match="--since"):
            durations.parse(text, "--since")
    else:
        assert isinstance(durations.parse(text, "--since"), timedelta)


@given(parts=st.lists(st.tuples(st.integers(0, 10_000), UNITS), min_size=1, max_size=4))
def test_numbers_with_units_add_up(parts: list[tuple[int, str]]) -> None:
    """`1h30m` is 5400 s: each number times its unit, summed (spaces and case do not matter)."""
    text = " ".join(f"{n}{unit.upper() if n % 2 else unit}" for n, unit in parts)
    expected = sum(n * durations.UNITS[unit] for n, unit in parts)
    assert durations.parse(text).total_seconds() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1.5h", 5400),
     ("500ms", 0.5), ("1w", 604800), ("PT1H", 3600), ("00:10:00", 600)],
)  # fmt: skip
def test_the_spellings_people_use(text: str, seconds: float) -> None:
    """Seconds, units, ISO 8601 and HH:MM:SS."""
    assert durations.parse(text).total_seconds() == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "-1h", "0", "0s", "1e400", "nan", "inf", "1h-", "h", "99999999999d", "1" * 100, "P-1D"],
)
def test_a_bad_since_is_a_usage_error(text: str) -> None:
    """Empty, words, negative, zero, infinite, past timedelta's range, too long: exit 2 naming --since."""
    ran = CliRunner().invoke(
        main, ["stats", "--since", text], env={"DATABASE_URL": "postgresql://nowhere:1/x"}
    )
    assert ran.exit_code == 2, ran.output
    assert "Invalid value for '--since'" in ran.output
    assert "Traceback" not in ran.output


@given(text=st.text(max_size=80).filter(refused))
def test_every_refused_since_is_a_usage_error_never_a_crash(text: str) -> None:
    """Any text the normaliser refuses: exit 2 with the option named, before any database work."""
    ran = CliRunner().invoke(
        main, ["stats", "--since", text], env={"DATABASE_URL": "postgresql://nowhere:1/x"}
    )
    assert ran.exit_code == 2, ran.output
    assert "--since" in ran.output


def test_duration_settings_read_units_too() -> None:
    """PGMQ_WORKER_POLL_INTERVAL=500ms is half a second, through the same normaliser."""
    assert WorkerSettings(poll_interval="500ms").poll_interval == timedelta(milliseconds=500)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="poll_interval"):
        WorkerSettings(poll_interval="soon")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "soon"])
def test_a_registry_heartbeat_must_be_a_positive_duration(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PGMQ_WORKER_REGISTRY_HEARTBEAT=0 (or no duration) is an invalid setting."""
    monkeypatch.setenv("PGMQ_WORKER_REGISTRY_HEARTBEAT", bad)
    with pytest.raises(ValidationError, match="registry_heartbeat"):
        WorkerSettings()


def test_the_fly_machine_comes_from_flys_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLY_MACHINE_ID and FLY_REGION (set by Fly, no PGMQ_WORKER_ prefix) go on the worker's card."""
    monkeypatch.setenv("FLY_MACHINE_ID", "3d8d9e1f")
    monkeypatch.setenv("FLY_REGION", "fra")
    card = card_for(["q"], WorkerSettings())
    assert (card.machine_id, card.region, card.queues) == ("3d8d9e1f", "fra", ("q",))
    monkeypatch.delenv("FLY_MACHINE_ID")
    monkeypatch.delenv("FLY_REGION")
    assert card_for(["q"], WorkerSettings()).machine_id is None


def test_the_tallies_count_attempts_that_ended() -> None:
    """Succeeded, retried and dead-lettered attempts are processed; the latter two failed; a
    waiting parent is neither."""
    presence = Presence(None, card_for(["q"], WorkerSettings()), lambda: 3)  # type: ignore[arg-type]
    error = ErrorInfo("E", "e", "")
    for outcome in [
        Succeeded(None),
        RetryLater(1.0, error),
        DeadLetter("permanent", error),
        Waiting(None, "f"),
    ]:  # type: ignore[arg-type]
        presence.settled(None, outcome, 1.0)  # type: ignore[arg-type]
    tally = presence.tally()
    assert (tally.processed, tally.failed, tally.in_flight, tally.status) == (3, 2, 3, "running")


def test_the_success_rate_is_of_the_finished_jobs() -> None:
    """succeeded / (succeeded + dead); None when none finished (a retry waiting is not finished)."""
    row = QueueStats("q", timedelta(hours=1), 3, 5, 1, 0, None, None, None, None, None, 0, 0)
    assert row.success_rate == 0.75
    assert (
        QueueStats("q", timedelta(hours=1), 0, 5, 0, 2, None, None, None, None, None, 0, 0).success_rate
        is None
    )
