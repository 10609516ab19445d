"""The reading order: which of its queues a worker asks first when it has free slots.

Queues are grouped by their handler's `priority` (higher first). A read asks the levels in that
order, each with the slots the levels above left over (strict priority). Within one level the
queues take turns being asked first, rotating by one every read (what the worker always did
across all its queues, so none of one priority starves another).

Strict priority starves a lower level while the levels above keep every slot busy. The guard
(`PGMQ_WORKER_PRIORITY_SHARE`, a fraction `share`) gives the lower levels their turns: of any `n`
consecutive reads, `floor(n * share)` (within one) start with a lower level, cycling through the
lower levels from the one just below the top. On such a turn the promoted level is asked first
and the others follow in priority order, so a lower queue with a backlog gets at least `share` of
the reads (and, when slots free one at a time, of the deliveries started) however busy the
higher ones are. `share = 0`: strict, no guard.

A paused queue (worker/pauses.py) is left out of the read, its turns going on as if it were
asked, so a resumed queue comes back to its place in the rotation.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

__all__ = ["SHARE_RESOLUTION", "ReadingOrder"]

SHARE_RESOLUTION = 1000  # the share is counted in thousandths: exact integer arithmetic, no drift


class ReadingOrder:
    """The queues of one worker, in the order the next read asks them."""

    def __init__(self, priorities: Mapping[str, int], share: float = 0.0) -> None:
        """`priorities`: queue -> priority, in the worker's order (which rotation starts from)."""
        if not priorities:
            raise ValueError("a reading order needs at least one queue")
        if not 0 <= share <= 1:
            raise ValueError(f"the priority share is a fraction from 0 to 1, got {share!r}")
        by_level: dict[int, list[str]] = {}
        for queue, priority in priorities.items():
            by_level.setdefault(priority, []).append(queue)
        self.priorities = sorted(by_level, reverse=True)  # the levels, highest first
        self._levels = [by_level[p] for p in self.priorities]
        self._turns = [0] * len(self._levels)  # per level: which of its queues is asked first next
        self._step = round(share * SHARE_RESOLUTION) if len(self._levels) > 1 else 0
        self._credit = 0  # thousandths of a guard turn earned; a turn is taken at SHARE_RESOLUTION
        self._guard_turns = 0  # how many so far: the next one promotes the level after these
        self.promoted: int | None = None  # the level the last read promoted (its index), if any

    @property
    def strict(self) -> bool:
        """No guard: a lower level is only asked with what the higher ones leave."""
        return self._step == 0

    def next(self, skip: Container[str] = frozenset()) -> list[str]:
        """The queues for the next read, first to ask first, less those in `skip` (paused); advances
        the rotation and the guard."""
        rotated = []
        for i, level in enumerate(self._levels):
            turn = self._turns[i]
            rotated.append(level[turn:] + level[:turn])
            self._turns[i] = (turn + 1) % len(level)
        self.promoted = self._guard_turn()
        if self.promoted is not None:
            rotated.insert(0, rotated.pop(self.promoted))
        return [queue for level in rotated for queue in level if queue not in skip]

    def _guard_turn(self) -> int | None:
        """The lower level this read starts with, when the guard's turn has come."""
        if not self._step:
            return None
        self._credit += self._step
        if self._credit < SHARE_RESOLUTION:
            return None
        self._credit -= SHARE_RESOLUTION
        lower = 1 + self._guard_turns % (len(self._levels) - 1)
        self._guard_turns += 1
        return lower

    def describe(self) -> dict[str, list[str]]:
        """Priority -> its queues, highest first (the worker.started log line)."""
        return {str(p): list(level) for p, level in zip(self.priorities, self._levels, strict=True)}
