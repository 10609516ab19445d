"""Read marks: per queue, the message id below which the worker's next reads need not look.

The read takes the lowest visible ids (`ORDER BY msg_id`) through the queue's primary key. Every
message a worker finishes is deleted, and while any transaction older than the delete is open
(an idle psql session, an analytics query, a replication slot) its index entry and heap row stay:
the read walks all of them, from the head of the index, on every call. With 100,000 jobs done
under a held snapshot a read of 100 visited 60,000 buffers and took 4x as long (bench/explain.py).

So each read starts just above the highest id the previous read returned: what lies below it was
then either handed out (ours or, past SKIP LOCKED, another worker's), or not yet visible (a
delay, a retry's backoff, a lease, an insert not yet committed). Those can become visible later,
so the mark holds for a while only: then one read looks from the start again. A message made
visible below the mark waits at most that long more; nothing is skipped for good. The while is
REFRESH_S, or longer when a read from the start is slow (many dead rows): OVERHEAD times what the
last one took, so those reads cost at most 1/OVERHEAD of the worker's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

REFRESH_S = 1.0  # how long a mark holds before a read looks from the start again, at least
OVERHEAD = 20  # ... and at least this many times the last read from the start took


class ReadMarks:
    """The marks of one worker's reads on one database, per queue."""

    def __init__(self, refresh_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh_s = refresh_s
        self._clock = clock
        self._marks: dict[str, int] = {}  # queue -> the lowest id its next read looks at
        self._until: dict[str, float] = {}  # queue -> when its next read looks from the start again
        self._from_start: dict[str, float] = {}  # queue -> when its read from the start began

    def low(self, queue: str) -> int:
        """The lowest id the next read of `queue` looks at (0: from the start)."""
        now = self._clock()
        if now < self._until.get(queue, now):
            return self._marks.get(queue, 0)
        self._from_start[queue] = now
        return 0

    def saw(self, queue: str, ids: Sequence[int]) -> None:
        """The read of `queue` that low() started returned these ids."""
        now = self._clock()
        began = self._from_start.pop(queue, None)
        if began is not None:  # the mark holds from now, for longer if that read was slow
            self._until[queue] = now + max(self._refresh_s, OVERHEAD * (now - began))
        if ids:  # nothing visible was left between where it started and these; none taken, no news
            self._marks[queue] = max(ids) + 1
