"""The reading order: strict priority, rotation within a level, and the starvation guard's share."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.reading_order import ReadingOrder


def test_one_level_rotates_as_the_worker_always_did() -> None:
    """Queues of one priority take turns being asked first, one step per read, in the worker's order."""
    order = ReadingOrder({"a": 0, "b": 0, "c": 0})
    assert [order.next() for _ in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    assert order.strict


def test_higher_priorities_are_asked_first_and_levels_rotate_on_their_own() -> None:
    """Every read asks the higher level first; within each level the queues rotate."""
    order = ReadingOrder({"bulk_a": 0, "urgent_a": 10, "bulk_b": 0, "urgent_b": 10, "mid": 5})
    assert order.priorities == [10, 5, 0]
    assert order.next() == ["urgent_a", "urgent_b", "mid", "bulk_a", "bulk_b"]
    assert order.next() == ["urgent_b", "urgent_a", "mid", "bulk_b", "bulk_a"]
    assert order.describe() == {"10": ["urgent_a", "urgent_b"], "5": ["mid"], "0": ["bulk_a", "bulk_b"]}


def test_strict_priority_never_starts_below_the_top() -> None:
    """Without the guard the lower level is never asked first, however many reads."""
    order = ReadingOrder({"urgent": 1, "bulk": 0}, share=0.0)
    assert all(order.next()[0] == "urgent" for _ in range(10_000))


def test_the_guard_gives_a_lower_level_its_share_of_first_asks() -> None:
    """share=0.05: exactly one read in twenty starts with the lower level, evenly spread."""
    order = ReadingOrder({"urgent": 1, "bulk": 0}, share=0.05)
    firsts = [order.next()[0] for _ in range(1000)]
    assert Counter(firsts) == {"urgent": 950, "bulk": 50}
    assert [i for i, q in enumerate(firsts) if q == "bulk"][:3] == [19, 39, 59]


def test_guard_turns_cycle_through_the_lower_levels() -> None:
    """With three levels each lower level gets half the guard's turns; the rest follow in priority order."""
    order = ReadingOrder({"hi": 2, "mid": 1, "lo": 0}, share=0.5)
    reads = [order.next() for _ in range(8)]
    assert (
        reads
        == [
            ["hi", "mid", "lo"],
            ["mid", "hi", "lo"],
            ["hi", "mid", "lo"],
            ["lo", "hi", "mid"],
        ]
        * 2
    )


def test_the_guard_is_off_with_one_level() -> None:
    """A single priority level has nothing below it to promote: plain rotation."""
    order = ReadingOrder({"a": 3, "b": 3}, share=0.5)
    assert order.strict
    assert [order.next() for _ in range(2)] == [["a", "b"], ["b", "a"]]


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    """The share is a fraction: anything else is a clear error."""
    with pytest.raises(ValueError, match="fraction"):
        ReadingOrder({"a": 0, "b": 1}, share=share)


def test_no_queues_is_refused() -> None:
    """An order of nothing is a mistake upstream."""
    with pytest.raises(ValueError, match="at least one queue"):
        ReadingOrder({})


queue_sets = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3), st.integers(-100, 100), min_size=1, max_size=8
)


@given(queues=queue_sets, share=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]), reads=st.integers(1, 300))
def test_a_lower_level_is_never_asked_before_a_higher_one_unless_it_is_the_guards_turn(
    queues: dict[str, int], share: float, reads: int
) -> None:
    """Every read lists each queue once; its levels are in priority order except the promoted one,
    which goes first; guard turns are floor(reads * share) (with more than one level) and rotation
    within a level gives each queue the first place of its level in turn."""
    order = ReadingOrder(queues, share=share)
    levels = sorted(set(queues.values()), reverse=True)
    promotions = 0
    firsts_in_level: dict[int, Counter[str]] = {p: Counter() for p in levels}
    for _ in range(reads):
        plan = order.next()
        assert sorted(plan) == sorted(queues)
        seen = [queues[q] for q in plan]
        if order.promoted is not None:
            promotions += 1
            promoted = levels[order.promoted]
            assert order.promoted >= 1  # never the top: that one is first anyway
            assert seen[0] == promoted
            rest = [p for p in seen if p != promoted]
            assert rest == sorted(rest, reverse=True)
        else:
            assert seen == sorted(seen, reverse=True)
        for p in levels:
            firsts_in_level[p][next(q for q in plan if queues[q] == p)] += 1
    expected = math.floor(reads * round(share * 1000) / 1000) if len(levels) > 1 else 0
    assert promotions == expected
    for p in levels:
        counts = firsts_in_level[p].values()
        members = sum(1 for q in queues if queues[q] == p)
        assert len(counts) == min(members, reads)
        assert max(counts) - min(counts) <= 1  # rotation: even turns within the level
