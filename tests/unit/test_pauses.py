"""The pause boundary without a database: which queue names and notes `queues.pause` takes, and the
reading order's skip of paused queues."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queues.errors import InvalidQueueName
from queues.names import MAX_LENGTH, is_dlq, validate_queue_name
from queues.pauses import MAX_BY, MAX_REASON, InvalidPauseNote, check_pause
from worker.reading_order import ReadingOrder

NAME_CHARS = st.sampled_from("abcxyz_019ABZ-. \x00é")
NAMES = st.text(NAME_CHARS, max_size=MAX_LENGTH + 8) | st.text(max_size=60)
NOTES = (
    st.none()
    | st.text(max_size=MAX_REASON + 20)
    | st.text(st.sampled_from("ab \x00\ud800"), max_size=20)
    | st.integers(0, MAX_REASON + 2).map(lambda n: " " * n)
)


def _valid_name(name: str) -> bool:
    try:
        validate_queue_name(name)
    except InvalidQueueName:
        return False
    return not is_dlq(name)


def _storable(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@given(NAMES, NOTES, NOTES)
def test_any_queue_and_notes_are_taken_or_refused_with_a_queue_error(
    queue: str, by: str | None, reason: str | None
) -> None:
    """A pause's input is taken only when the name is a work queue's and both notes can be stored
    and are short enough; anything else is InvalidQueueName or InvalidPauseNote, never another error."""
    try:
        params = check_pause(queue, by, reason)
    except InvalidQueueName:
        assert not _valid_name(queue)
        return
    except InvalidPauseNote:
        assert _valid_name(queue)
        assert any(
            note is not None and (len(note) > limit or (note.strip() and not _storable(note)))
            for note, limit in ((by, MAX_BY), (reason, MAX_REASON))
        )
        return
    assert _valid_name(queue)
    for key, note, limit in (("by", by, MAX_BY), ("reason", reason, MAX_REASON)):
        if note is None or not note.strip():
            assert params[key] is None  # an empty note is no note
        else:
            assert params[key] == note and len(note) <= limit and _storable(note)


def test_the_note_limits_are_exact() -> None:
    """500 characters of reason are taken, 501 are not; NUL anywhere is refused."""
    assert check_pause("q", reason="r" * MAX_REASON)["reason"] == "r" * MAX_REASON
    for bad in ("r" * (MAX_REASON + 1), "a\x00b"):
        with pytest.raises(InvalidPauseNote, match="reason"):
            check_pause("q", reason=bad)


QUEUES = st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True)


@given(QUEUES, st.sets(st.sampled_from("abcdef")))
def test_the_reading_order_leaves_out_exactly_the_paused_queues(queues: list[str], skip: set[str]) -> None:
    """A read asks every queue but the paused ones, in the order it would have asked them."""
    skipping, plain = ReadingOrder(dict.fromkeys(queues, 0)), ReadingOrder(dict.fromkeys(queues, 0))
    for _ in range(len(queues) + 1):
        assert skipping.next(skip=skip) == [q for q in plain.next() if q not in skip]
