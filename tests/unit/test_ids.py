"""Client-made job ids: version 7, stamped with the time, distinct, in the byte order the SQL reads."""

from __future__ import annotations

import time
import uuid

import pytest

from queues.ids import uuid7, uuid7_batch


def test_a_batch_is_version_7_stamped_now_and_distinct() -> None:
    before = time.time_ns() // 1_000_000
    raw, ids = uuid7_batch(2000)
    after = time.time_ns() // 1_000_000
    assert len(raw) == 16 * 2000
    assert [i.bytes for i in ids] == [raw[k : k + 16] for k in range(0, len(raw), 16)]
    assert len(set(ids)) == 2000
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert {int(i.hex[:12], 16) for i in ids} <= set(range(before, after + 1))
    assert len({i.int & ((1 << 62) - 1) for i in ids}) == 2000  # the random part differs


def test_ids_sort_by_their_millisecond() -> None:
    _, older = uuid7_batch(3, now_ms=1_700_000_000_000)
    _, newer = uuid7_batch(3, now_ms=1_700_000_000_001)
    assert max(older) < min(newer)
    assert int(older[0].hex[:12], 16) == 1_700_000_000_000
    assert uuid7() > max(newer)


def test_none_and_a_negative_count() -> None:
    assert uuid7_batch(0) == (b"", [])
    with pytest.raises(ValueError, match="negative"):
        uuid7_batch(-1)
