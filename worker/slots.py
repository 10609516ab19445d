"""Slots: what this worker has in flight, how many more it may start, and the drain at the end.

A delivery takes a slot when it is dispatched and gives its handler's share back when the handler
returns, not when its (batched) ack lands: the next read overlaps the previous batch's ack instead
of waiting for it. A read asks for half the slots at most (`to_read`), so it overlaps the
handlers the previous read started too. Deliveries still settling (a task, or an ack handed to
the settle) are capped at another `concurrency`, so a slow database holds at most twice as many.
A `def` handler also needs one of the `threads`, and a queue whose handler has its own
`concurrency` one of its own slots (`free_of`): the running handlers are counted per queue here,
the one count of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from db.logs import get_logger
from worker.leases import Lease, Leases
from worker.registry import HandlerSpec
from worker.settle import Settle
from worker.store.deliveries import Message
from worker.threads import HandlerThreads

log = get_logger()

Key = tuple[str, int]  # (queue, msg_id)


class Slots:
    """Every delivery from dispatch to settled, the leases they hold, and the drain."""

    def __init__(self, concurrency: int, threads: HandlerThreads, leases: Leases, settle: Settle) -> None:
        self.concurrency = concurrency
        self._read_at_most = max(1, -(-concurrency // 2))  # half the slots, rounded up (to_read)
        self.threads = threads
        self.leases = leases
        self.settle = settle
        self.freed = asyncio.Event()  # a handler ended or a settle landed: there may be room now
        self._tasks: dict[Key, asyncio.Task[None]] = {}  # every delivery's task, dispatch to its end
        self._running: set[Key] = set()  # of those, the ones whose handler still runs
        self._threaded: set[Key] = set()  # of those, `def` handlers (one thread each)
        self._per_queue: dict[str, int] = {}  # `_running` counted by queue

    def free(self) -> int:
        """Handlers that may start now (see the module's docstring)."""
        settling = len(self._tasks) + self.settle.pending
        return min(self.concurrency - len(self._running), 2 * self.concurrency - settling)

    def to_read(self) -> int:
        """How many the next read asks for: the free slots, half of all of them at most.

        With every slot free (handlers quicker than a read), the next read is then on its way
        while the handlers the last one started run, instead of the loop waiting for each read
        in turn with nothing to do (1.26x draining no-op jobs at concurrency 100, docs/benchmarks.md).
        """
        return min(self.free(), self._read_at_most)

    def free_threads(self) -> int:
        """`def` handlers that may start now: threads not taken by a running or timed-out handler.

        A sync handler past its timeout keeps its thread until it returns (`threads.busy` counts
        it); one dispatched but not yet started is only in `_threaded`.
        """
        return self.threads.size - max(len(self._threaded), self.threads.busy)

    def free_of(self, spec: HandlerSpec) -> int:
        """Of the queue's own slots (`@handler(..., concurrency=N)`), those free; else `concurrency`."""
        if spec.concurrency is None:
            return self.concurrency
        return spec.concurrency - self._per_queue.get(spec.queue, 0)

    def unsettled(self) -> int:
        """Deliveries not yet settled: their tasks, and what the settle still holds for them."""
        return len(self._tasks) + self.settle.pending

    def in_flight(self) -> int:
        """Deliveries whose task has not ended."""
        return len(self._tasks)

    def in_flight_by_queue(self) -> dict[str, int]:
        """in_flight() by queue; safe from another thread (the metrics exporter's)."""
        counts: dict[str, int] = {}
        for queue, _msg_id in tuple(self._tasks):  # one C-level copy: the loop may add keys meanwhile
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    def start(self, message: Message, spec: HandlerSpec, run: Coroutine[Any, Any, None]) -> None:
        """Run the delivery's coroutine in a task of its own, holding a slot until it ends."""
        task = asyncio.create_task(run, name=f"{message.queue}:{message.msg_id}")
        key = (message.queue, message.msg_id)
        self._tasks[key] = task
        if key not in self._running:  # the same delivery twice (a lost lease read again) counts once
            self._running.add(key)
            self._per_queue[message.queue] = self._per_queue.get(message.queue, 0) + 1
        if not spec.is_async:
            self._threaded.add(key)

        def _done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(key, None)
            self._returned(key)  # a task cancelled before its handler started

        task.add_done_callback(_done)

    def _returned(self, key: Key) -> None:
        """The delivery's handler has ended (or never started): its slots are free."""
        if key in self._running:
            self._running.remove(key)
            left = self._per_queue[key[0]] - 1
            if left:
                self._per_queue[key[0]] = left
            else:
                del self._per_queue[key[0]]
        self._threaded.discard(key)
        self.freed.set()

    def lease(self, message: Message, spec: HandlerSpec) -> Holding:
        """`async with slots.lease(message, spec) as lease:` the delivery is held (and renewed)
        inside the block, and its handler's slot is free once the block ends."""
        return Holding(self, message, spec)

    async def wait(self, stopping: asyncio.Event) -> None:
        """Until a slot may be free (or a stop)."""
        self.freed.clear()
        waiters = {asyncio.ensure_future(self.freed.wait()), asyncio.ensure_future(stopping.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def drain(self, grace: float, cold: asyncio.Event) -> None:
        """Let in-flight handlers (and their acks) finish within `grace`; then cancel and release the rest."""
        if not self.unsettled():
            return
        log.info("worker.draining", in_flight=self.unsettled(), grace_s=grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        cold_stop = asyncio.ensure_future(cold.wait())
        try:
            while self.unsettled() and not cold.is_set() and loop.time() < deadline:
                flushed = asyncio.ensure_future(self.settle.flushed())
                waiting: set[asyncio.Future[Any]] = {*self._tasks.values(), *self.settle.retrying(), flushed}
                try:
                    await asyncio.wait(
                        {*waiting, cold_stop},
                        timeout=deadline - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    flushed.cancel()
        finally:
            cold_stop.cancel()
        remaining = list(self._tasks.values())
        if remaining:
            log.warning("worker.releasing", in_flight=len(remaining))
        for task in remaining:
            task.cancel()  # each settles as Abandoned("shutdown"): visible again at once
        await asyncio.gather(*remaining, return_exceptions=True)
        await self.settle.give_up()


class Holding:
    """One delivery's lease and handler slot, for the length of an `async with` block."""

    __slots__ = ("_key", "_lease", "_message", "_slots", "_spec")

    def __init__(self, slots: Slots, message: Message, spec: HandlerSpec) -> None:
        self._slots = slots
        self._message = message
        self._spec = spec
        self._key = (message.queue, message.msg_id)
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        this = asyncio.current_task()
        assert this is not None  # noqa: S101  always inside the delivery's task
        # A lost lease cancels the delivery's task: the handler stops, the delivery is not settled.
        self._lease = self._slots.leases.hold(self._message, self._spec.read_vt, this.cancel)
        return self._lease

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            self._slots.leases.drop(self._lease)  # before settling: a renewal racing the ack is not a loss
        self._slots._returned(self._key)
