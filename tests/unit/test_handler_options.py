"""@handler(priority=, concurrency=): checked at decoration, and one function on two queues."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import Context, Registry, handler
from worker.errors import HandlerRegistrationError
from worker.registry import HandlerSpec


def test_priority_and_concurrency_land_on_the_spec() -> None:
    """The options are the spec's; the defaults are priority 0 and no queue cap."""
    reg = Registry()
    handler("fast", priority=10, concurrency=3, registry=reg)(_fresh())
    handler("plain", registry=reg)(lambda payload, ctx: None)
    assert (reg.get("fast").priority, reg.get("fast").concurrency) == (10, 3)
    assert (reg.get("plain").priority, reg.get("plain").concurrency) == (0, None)


@pytest.mark.parametrize("priority", [-100, 0, 100])
def test_the_priority_bounds_are_inclusive(priority: int) -> None:
    """-100 and 100 are the ends of the range."""
    reg = Registry()
    handler("q", priority=priority, registry=reg)(_fresh())
    assert reg.get("q").priority == priority


bad_priorities = st.one_of(
    st.integers().filter(lambda n: not -100 <= n <= 100),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)


@given(priority=bad_priorities)
def test_a_bad_priority_is_refused_at_decoration(priority: Any) -> None:
    """Anything but an integer from -100 to 100 (a bool, a float, a string, None) is a clear error."""
    with pytest.raises(HandlerRegistrationError, match=r"priority must be an integer from -100 to 100"):
        handler("q", priority=priority)


bad_concurrencies = st.one_of(
    st.integers().filter(lambda n: not 1 <= n <= 1000),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=4),
)


@given(concurrency=bad_concurrencies)
def test_a_bad_concurrency_is_refused_at_decoration(concurrency: Any) -> None:
    """concurrency is None or an integer from 1 to 1000; 0, negatives, bools and floats are refused."""
    with pytest.raises(
        HandlerRegistrationError, match=r"concurrency must be None or an integer from 1 to 1000"
    ):
        handler("q", concurrency=concurrency)


def test_stacked_handlers_serve_two_queues_with_one_function() -> None:
    """`@handler("report_urgent", priority=10)` over `@handler("report_bulk")`: one function, two specs."""
    reg = Registry()

    @handler("report_urgent", priority=10, registry=reg)
    @handler("report_bulk", concurrency=2, registry=reg)
    async def report(payload: dict[str, Any], ctx: Context) -> None:
        return None

    assert reg.queues() == ["report_bulk", "report_urgent"]
    urgent, bulk = reg.get("report_urgent"), reg.get("report_bulk")
    assert urgent.fn is bulk.fn is report
    assert (urgent.priority, urgent.concurrency) == (10, None)
    assert (bulk.priority, bulk.concurrency) == (0, 2)
    marks = report.__pgmq_handler__  # type: ignore[attr-defined]
    assert [m.queue for m in marks] == ["report_bulk", "report_urgent"]


def test_the_same_queue_twice_on_one_function_is_refused() -> None:
    """Stacking the same queue is a mistake, not a silent replacement."""
    with pytest.raises(HandlerRegistrationError, match="already handles queue 'twice'"):
        handler("twice")(handler("twice")(_fresh()))


def test_from_modules_finds_every_queue_of_a_stacked_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry built from the module (what `--import` does) has both queues of the stacked function."""
    stacked = handler("stk_urgent", priority=5)(handler("stk_bulk")(_fresh()))
    monkeypatch.setattr(sys.modules[__name__], "stacked_report", stacked, raising=False)
    reg = Registry.from_modules([__name__])
    assert reg.queues() == ["stk_bulk", "stk_urgent"]
    assert isinstance(reg.get("stk_urgent"), HandlerSpec)
    assert reg.get("stk_urgent").priority == 5


def _fresh() -> Any:
    async def report(payload: dict[str, Any], ctx: Context) -> None:
        return None

    return report
