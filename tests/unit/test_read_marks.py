"""Read marks: where the worker's next read of a queue starts, and when it looks from the start again."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.store.read_marks import OVERHEAD, ReadMarks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reads_start_above_the_last_one_taken_until_the_mark_lapses() -> None:
    clock = Clock()
    marks = ReadMarks(refresh_s=1.0, clock=clock)
    assert marks.low("q") == 0  # nothing known: from the start
    marks.saw("q", [3, 7, 5])
    assert marks.low("q") == 8
    marks.saw("q", [])  # an empty read leaves the mark where it was
    assert marks.low("q") == 8
    marks.saw("q", [9])
    clock.now += 0.99
    assert marks.low("q") == 10
    marks.saw("q", [])
    clock.now += 0.02  # the mark lapsed: one read from the start (a retry below it is due)
    assert marks.low("q") == 0
    marks.saw("q", [4])
    assert marks.low("q") == 5  # the mark follows what that read found, even downwards


def test_a_slow_read_from_the_start_holds_the_mark_longer() -> None:
    clock = Clock()
    marks = ReadMarks(refresh_s=1.0, clock=clock)
    assert marks.low("q") == 0
    clock.now += 0.5  # the read from the start took 0.5 s (many dead rows)
    marks.saw("q", [1])
    clock.now += OVERHEAD * 0.5 - 0.01
    assert marks.low("q") == 2
    marks.saw("q", [])
    clock.now += 0.02
    assert marks.low("q") == 0


def test_queues_are_marked_apart() -> None:
    marks = ReadMarks(clock=Clock())
    marks.low("a")
    marks.saw("a", [10])
    assert marks.low("a") == 11
    assert marks.low("b") == 0


@given(st.lists(st.lists(st.integers(min_value=1, max_value=10**12), max_size=5), max_size=30))
def test_the_mark_never_passes_an_id_a_read_did_not_return(batches: list[list[int]]) -> None:
    """Whatever the reads return, the next read starts at 0 or just above the latest ids returned."""
    clock = Clock()
    marks = ReadMarks(clock=clock)
    last: list[int] = []
    for ids in batches:
        low = marks.low("q")
        assert low == 0 or low == max(last) + 1
        marks.saw("q", ids)
        last = ids or last
        clock.now += 0.3
