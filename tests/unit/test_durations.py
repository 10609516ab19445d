"""Durations with units (`7d`, `12h`) as --older-than (edge.AGE) and PGMQ_WORKER_RETENTION take them."""

from __future__ import annotations

from datetime import timedelta

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from db.durations import MIN_INTERVAL
from db.settings import DatabaseSettings
from web.settings import WebSettings
from worker.commands.edge import AGE
from worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("1.5m", timedelta(seconds=90)),
        (" 2W ", timedelta(weeks=2)),
        ("45", timedelta(seconds=45)),
        ("0", timedelta(0)),
    ],
)
def test_units(text: str, expected: timedelta) -> None:
    """Each unit means what it says; a bare number is seconds."""
    assert AGE.convert(text, None, None) == expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=30) | st.from_regex(r"-?[0-9]{1,25}(\.[0-9]+)?[smhdwSMHDWxy]?", fullmatch=True))
def test_an_age_is_a_non_negative_timedelta_or_a_usage_error(text: str) -> None:
    """--older-than's type answers a timedelta >= 0 or a usage error, whatever the text."""
    try:
        value = AGE.convert(text, None, None)
    except click.BadParameter:
        return
    assert value >= timedelta(0)


def test_retention_setting_accepts_units_and_refuses_negatives() -> None:
    """PGMQ_WORKER_RETENTION=7d is a week; 0 is off; negative ones and a zero interval are refused."""
    assert WorkerSettings(retention="7d").retention == timedelta(days=7)  # type: ignore[arg-type]
    assert WorkerSettings(retention="0").retention == timedelta(0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        WorkerSettings(retention="-5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        WorkerSettings(retention_interval=0)  # type: ignore[arg-type]


@given(text=st.text(max_size=12) | st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?(ms|s)?", fullmatch=True))
def test_running_after_is_at_least_ten_milliseconds_or_refused(text: str) -> None:
    """PGMQ_WORKER_RUNNING_AFTER: any text is a duration of 10 ms or more, or a ValidationError
    naming the setting (0 or a negative would have the marker loop spin)."""
    try:
        value = WorkerSettings(running_after=text).running_after  # type: ignore[arg-type]
    except ValidationError as exc:
        refused = str(exc)
    else:
        assert value >= timedelta(milliseconds=10)
        return
    assert "running_after" in refused


def test_running_after_refuses_zero_and_negatives() -> None:
    assert WorkerSettings(running_after="250ms").running_after == timedelta(milliseconds=250)  # type: ignore[arg-type]
    for bad in ("0", "-1", "5ms"):
        with pytest.raises(ValidationError, match=r"running_after\s+Value error, must be at least 0\.01 s"):
            WorkerSettings(running_after=bad)  # type: ignore[arg-type]


BOUNDED = [
    (WorkerSettings, name, floor)
    for names, floor in (
        (
            (
                *("poll_interval", "heartbeat_interval", "reconnect_max", "running_after"),
                *("webhook_timeout", "registry_heartbeat", "loop_block_threshold"),
            ),
            MIN_INTERVAL,
        ),
        (("shutdown_grace", "progress_interval", "cancel_grace", "metrics_queue_cache"), timedelta(0)),
    )
    for name in names
] + [
    (WebSettings, "sse_keepalive", MIN_INTERVAL),
    (WebSettings, "sse_poll_interval", MIN_INTERVAL),
    (WebSettings, "web_metrics_queue_cache", timedelta(0)),
    (DatabaseSettings, "connect_timeout", timedelta(0)),
]


@settings(max_examples=40)
@pytest.mark.parametrize(("model", "name", "floor"), BOUNDED)
@given(text=st.text(max_size=12) | st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?(ms|s)?", fullmatch=True))
def test_every_duration_setting_is_above_its_floor_or_refused_by_name(
    model: type[BaseSettings], name: str, floor: timedelta, text: str
) -> None:
    """Any text for a period (a poll, a heartbeat, a keepalive, a backoff, a timeout) is 10 ms or
    more, and for a grace or a cache's age 0 or more, or a ValidationError naming the setting: a
    0 or negative period had its loop spin, and a negative grace meant nothing."""
    try:
        value = getattr(model(**{name: text}), name)
    except ValidationError as exc:
        refused = str(exc)
    else:
        assert value >= floor
        return
    assert name in refused


@pytest.mark.parametrize(("model", "name", "floor"), BOUNDED)
def test_the_floor_itself_is_taken_and_just_below_it_is_refused(
    model: type[BaseSettings], name: str, floor: timedelta
) -> None:
    assert getattr(model(**{name: floor}), name) == floor
    with pytest.raises(
        ValidationError, match=rf"{name}\s+Value error, must be at least {floor.total_seconds():g} s"
    ):
        model(**{name: floor - timedelta(milliseconds=1)})
