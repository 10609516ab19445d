"""Schedule declarations and their arithmetic: cron (with seconds), timezones and DST, catch-up."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from queues.contract import Contract
from worker import Context, Registry, handler, schedule
from worker.errors import ScheduleError
from worker.schedules import MAX_TICKS_PER_PASS, SCHEDULES_ATTRIBUTE, Schedule

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str


REPORTS = Contract("reports", Report)


def at(*parts: int, tz: Any = UTC) -> datetime:
    return datetime(*parts, tzinfo=tz)  # type: ignore[misc]


def test_five_fields_tick_on_the_minute_and_six_take_seconds_first() -> None:
    """`*/15 * * * *` ticks every quarter hour; `*/10 * * * * *` every ten seconds."""
    quarter = schedule("q", "*/15 * * * *")
    assert [t.isoformat() for t in _take(quarter.ticks_after(T0), 2)] == [
        "2026-01-01T00:15:00+00:00",
        "2026-01-01T00:30:00+00:00",
    ]
    tens = schedule("q", "*/10 * * * * *")
    assert _take(tens.ticks_after(T0 + timedelta(seconds=3)), 3) == [
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=20),
        T0 + timedelta(seconds=30),
    ]


def test_next_tick_is_strictly_after_and_latest_tick_is_at_or_before() -> None:
    """A time that is a tick: next_tick is the one after it, latest_tick the tick itself."""
    every = schedule("q", "* * * * * *")
    assert every.next_tick(T0) == T0 + timedelta(seconds=1)
    assert every.next_tick(T0 + timedelta(milliseconds=300)) == T0 + timedelta(seconds=1)
    assert every.latest_tick(T0) == T0
    assert every.latest_tick(T0 + timedelta(milliseconds=999)) == T0


def test_default_name_is_queue_and_cron_and_a_name_is_kept() -> None:
    """Without name= the key is `<queue> <cron>` (whitespace normalised); name= wins."""
    assert schedule("q", "0  3 * * *").name == "q 0 3 * * *"
    assert schedule("q", "0 3 * * *", name="nightly").name == "nightly"


def test_spring_forward_runs_a_missing_0230_once_at_0300() -> None:
    """On 29 March 2026 Berlin skips 02:00-03:00: the 02:30 daily tick runs at 03:00 CEST that day."""
    daily = schedule("q", "30 2 * * *", timezone="Europe/Berlin")
    ticks = _take(daily.ticks_after(at(2026, 3, 28, 12, tz=BERLIN)), 3)
    assert [t.isoformat() for t in ticks] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert ticks[0] - at(2026, 3, 28, 1, 30) == timedelta(hours=23, minutes=30)  # 01:30 UTC the day before


def test_fall_back_runs_a_twice_seen_0230_once() -> None:
    """On 25 October 2026 02:30 happens twice in Berlin: the daily tick runs at the first only."""
    daily = schedule("q", "30 2 * * *", timezone="Europe/Berlin")
    ticks = _take(daily.ticks_after(at(2026, 10, 24, 12, tz=BERLIN)), 3)
    assert [t.isoformat() for t in ticks] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    # Starting inside the repeated hour (the second 02:30, CET) finds the next day's, not the same one again.
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1)
    assert daily.next_tick(second).isoformat() == "2026-10-26T02:30:00+01:00"


def test_hourly_ticks_through_the_fall_back_are_distinct_instants() -> None:
    """`0 * * * *` in Berlin on the fall-back night: every UTC hour once (the repeated hour too)."""
    hourly = schedule("q", "0 * * * *", timezone="Europe/Berlin")
    ticks = _take(hourly.ticks_after(at(2026, 10, 24, 22)), 5)  # 00:00 CEST is 22:00 UTC
    utc = [t.astimezone(UTC).hour for t in ticks]
    assert utc == [23, 0, 1, 2, 3]
    assert len({t.astimezone(UTC) for t in ticks}) == 5


def test_a_running_worker_sends_every_tick_due() -> None:
    """Not resumed (on time): every tick in (after, now], whatever the policy."""
    for policy in ("latest", "none", timedelta(seconds=1)):
        every = schedule("q", "* * * * * *", catch_up=policy)  # type: ignore[arg-type]
        plan = every.plan(T0, T0 + timedelta(seconds=3.5), resumed=False)
        assert plan.send == [T0 + timedelta(seconds=s) for s in (1, 2, 3)]
        assert plan.cursor == T0 + timedelta(seconds=3)


def test_catch_up_latest_sends_only_the_newest_missed_tick() -> None:
    """After a ten-hour downtime an hourly schedule runs the newest missed tick, once."""
    hourly = schedule("q", "0 * * * *")
    plan = hourly.plan(T0, T0 + timedelta(hours=10, minutes=20), resumed=True)
    assert plan.send == [T0 + timedelta(hours=10)]
    assert plan.cursor == T0 + timedelta(hours=10)


def test_catch_up_none_sends_nothing_missed_and_moves_on() -> None:
    """`none`: the missed ticks are dealt with (the cursor passes them), none sent."""
    hourly = schedule("q", "0 * * * *", catch_up="none")
    plan = hourly.plan(T0, T0 + timedelta(hours=10, minutes=20), resumed=True)
    assert plan.send == []
    assert plan.cursor == T0 + timedelta(hours=10)


def test_catch_up_window_sends_every_missed_tick_within_it_oldest_first() -> None:
    """A three-hour window after ten hours down: the ticks of the last three hours."""
    hourly = schedule("q", "0 * * * *", catch_up=timedelta(hours=3))
    now = T0 + timedelta(hours=10, minutes=20)
    plan = hourly.plan(T0, now, resumed=True)
    assert plan.send == [T0 + timedelta(hours=h) for h in (8, 9, 10)]
    assert plan.cursor >= T0 + timedelta(hours=10)


def test_catch_up_window_over_many_ticks_goes_in_bounded_passes() -> None:
    """An every-second schedule down for an hour, window an hour: passes of MAX_TICKS_PER_PASS."""
    every = schedule("q", "* * * * * *", catch_up=timedelta(hours=1))
    now = T0 + timedelta(hours=1)
    sent: list[datetime] = []
    cursor = T0
    for _ in range(10):
        plan = every.plan(cursor, now, resumed=True)
        assert len(plan.send) <= MAX_TICKS_PER_PASS
        sent += plan.send
        if plan.cursor == cursor or not plan.send:
            break
        cursor = plan.cursor
    assert sent == [T0 + timedelta(seconds=s) for s in range(1, 3601)]


def test_nothing_due_leaves_the_cursor() -> None:
    """A pass before the next tick sends nothing and keeps its place."""
    hourly = schedule("q", "0 * * * *")
    for resumed in (False, True):
        plan = hourly.plan(T0, T0 + timedelta(minutes=5), resumed=resumed)
        assert plan.send == []
        assert plan.cursor == T0


def test_the_payload_is_checked_against_the_contract_when_declared() -> None:
    """A payload the queue's model refuses is a ScheduleError naming the schedule."""
    assert schedule(REPORTS, "0 3 * * *", payload={"kind": "daily"}).payload == {"kind": "daily"}
    assert schedule(REPORTS, "0 3 * * *", payload=Report(kind="x")).payload == {"kind": "x"}
    with pytest.raises(ScheduleError, match=r"schedule 'nightly'.*kind"):
        schedule(REPORTS, "0 3 * * *", payload={"kind": 3, "extra": 1}, name="nightly")
    with pytest.raises(ScheduleError, match="JSON object"):
        schedule("q", "0 3 * * *", payload=[1, 2])
    with pytest.raises(ScheduleError, match="cannot be stored"):
        schedule("q", "0 3 * * *", payload={"x": float("nan")})


def test_the_payload_is_checked_against_the_handlers_model_in_a_registry() -> None:
    """A plain queue name, but its handler annotates a model: the registry checks the payload."""
    reg = Registry()

    @handler("reports", registry=reg)
    async def report(payload: Report, ctx: Context) -> None:
        """Report."""

    schedule("reports", "0 3 * * *", payload={"kind": "ok"}, registry=reg)
    with pytest.raises(ScheduleError, match=r"'bad'.*does not fit Report"):
        schedule("reports", "0 4 * * *", payload={"nope": 1}, name="bad", registry=reg)
    # And the other way round: a schedule first, then the handler whose model refuses it.
    later = Registry()
    schedule("reports", "0 4 * * *", payload={"nope": 1}, name="early", registry=later)
    with pytest.raises(ScheduleError, match="'early'"):

        @handler("reports", registry=later)
        async def report_again(payload: Report, ctx: Context) -> None:
            """Report."""


def test_two_schedules_under_one_name_are_refused_and_a_repeat_is_not() -> None:
    """The name keys the ticks: another declaration under it is an error, the same one again is not."""
    reg = Registry()
    schedule("q", "0 3 * * *", name="nightly", registry=reg)
    schedule("q", "0 3 * * *", name="nightly", registry=reg)
    assert [s.name for s in reg.schedules()] == ["nightly"]
    with pytest.raises(ScheduleError, match="two schedules are named 'nightly'"):
        schedule("q", "0 4 * * *", name="nightly", registry=reg)


def test_a_module_keeps_its_top_level_schedules_for_from_modules(tmp_path: Any, monkeypatch: Any) -> None:
    """schedule() at a module's top level leaves it in the module; Registry.from_modules finds it."""
    package = tmp_path / "sched_mod_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from worker import Context, handler, schedule\n"
        "schedule('tidy', '*/5 * * * *', payload={'deep': True}, name='tidy-up')\n"
        "@handler('tidy')\n"
        "async def tidy(payload, ctx):\n"
        "    '''Tidy.'''\n"
    )
    (package / "more.py").write_text("from worker import schedule\nschedule('tidy', '0 0 * * *')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sched_mod_pkg.more  # noqa: F401, PLC0415  (a submodule the walk must reach)

    reg = Registry.from_modules(["sched_mod_pkg"])
    assert [s.name for s in reg.schedules()] == ["tidy 0 0 * * *", "tidy-up"]
    assert reg.has_schedules("tidy") and not reg.has_schedules("other")
    assert Registry().schedules() == []  # nothing global: a new registry has none


def test_a_schedule_inside_a_function_stays_with_its_caller() -> None:
    """Not at a module's top level: no module gains it (a test cannot leak one into another)."""
    here = types.ModuleType("here")
    exec("def make():\n    from worker import schedule\n    return schedule('q', '0 1 * * *')\n", vars(here))  # noqa: S102
    made = here.make()
    assert isinstance(made, Schedule)
    assert SCHEDULES_ATTRIBUTE not in vars(here)


@pytest.mark.parametrize(
    ("cron", "match"),
    [
        ("* * * *", "five fields"),
        ("* * * * * * *", "five fields"),
        ("61 * * * *", "invalid"),
        ("* 25 * * *", "invalid"),
        ("0 0 31 2 *", "invalid"),
        ("*/0 * * * *", "invalid"),
        ("banana * * * *", "invalid"),
    ],
)
def test_a_bad_cron_is_a_schedule_error_naming_it(cron: str, match: str) -> None:
    """Wrong field counts, ranges, impossible dates: ScheduleError at declaration."""
    with pytest.raises(ScheduleError, match=rf"schedule 'named'.*{match}"):
        schedule("q", cron, name="named")


FIELD = st.sampled_from(
    ["*", "0", "5", "*/7", "1-5", "1,3", "59", "60", "31", "0-70", "L", "MON", "x", "*/0", "?"]
)
CRONS = st.text(max_size=40) | st.lists(FIELD, min_size=4, max_size=7).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(CRONS)
def test_any_text_as_cron_parses_or_is_a_schedule_error(cron: str) -> None:
    """Nothing a user writes as a cron raises anything but ScheduleError; what parses has a next tick."""
    try:
        declared = schedule("q", cron, name="fuzz")
    except ScheduleError as exc:
        message = str(exc)
    else:
        assert declared.next_tick(T0) > T0
        return
    assert "'fuzz'" in message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40) | st.none() | st.integers())
def test_any_timezone_is_known_or_a_schedule_error(timezone: Any) -> None:
    """A timezone is an IANA name or ScheduleError (never ZoneInfo's own errors)."""
    try:
        declared = schedule("q", "0 3 * * *", timezone=timezone, name="tz")
    except ScheduleError as exc:
        message = str(exc)
    else:
        assert declared.next_tick(T0).tzinfo is not None
        return
    assert "'tz'" in message


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.text(max_size=10), st.integers(), st.floats(), st.none(), st.timedeltas(max_value=timedelta(0))
    )
)
def test_any_bad_catch_up_is_a_schedule_error(catch_up: Any) -> None:
    """catch_up is 'latest', 'none' or a positive timedelta; anything else is named and refused."""
    if catch_up in ("latest", "none"):
        return
    with pytest.raises(ScheduleError, match="catch_up"):
        schedule("q", "0 3 * * *", catch_up=catch_up, name="c")


def test_catch_up_all_without_a_window_says_how() -> None:
    """'all' alone: the error says to pass the window."""
    with pytest.raises(ScheduleError, match=r"timedelta\(hours=6\)"):
        schedule("q", "0 3 * * *", catch_up="all")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "a\x00b", 5])
def test_a_bad_name_is_a_schedule_error(name: Any) -> None:
    """Names key the ticks table: 1-200 storable characters."""
    with pytest.raises(ScheduleError, match="name"):
        schedule("q", "0 3 * * *", name=name)


def test_a_bad_queue_name_is_a_schedule_error() -> None:
    """The queue name is checked as everywhere else, in a ScheduleError."""
    with pytest.raises(ScheduleError, match="schedule"):
        schedule("no spaces allowed", "0 3 * * *")


def _take(ticks: Any, n: int) -> list[datetime]:
    return [next(ticks) for _ in range(n)]
