"""Leases: the deliveries this worker holds, kept invisible by renewing their visibility timeout.

One heartbeat task renews every lease due for renewal with one guarded UPDATE per queue, instead of
a timer per message. A lease is due at half its visibility timeout, so a renewal has the other
half to get through a slow or reconnecting database before the message could reappear.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool

from db.errors import one_line
from db.listen import sleep_or_stop
from db.logs import get_logger
from worker.store import deliveries
from worker.store.deliveries import Message
from worker.trouble import TRANSIENT

log = get_logger()


@dataclass(slots=True)
class Lease:
    """One delivery we hold: renew it before `expires_at` (loop time) or lose it."""

    message: Message
    vt_s: float
    expires_at: float
    on_lost: Callable[[], object]
    lost: bool = field(default=False)

    @property
    def key(self) -> tuple[str, int]:
        """(queue, msg_id)."""
        return (self.message.queue, self.message.msg_id)


class Leases:
    """The set of held deliveries and the heartbeat that renews them."""

    def __init__(self, pool: AsyncConnectionPool, interval: float) -> None:
        self._pool = pool
        self._interval = interval
        self._held: dict[tuple[str, int], Lease] = {}
        self.renewals = 0  # leases renewed, and found taken by another delivery (worker.metrics)
        self.lost = 0

    def hold(self, message: Message, vt_s: float, on_lost: Callable[[], object]) -> Lease:
        """Start tracking a delivery just read with visibility vt_s."""
        loop = asyncio.get_running_loop()
        lease = Lease(message, vt_s, loop.time() + vt_s, on_lost)
        self._held[lease.key] = lease
        return lease

    def drop(self, lease: Lease) -> None:
        """Stop renewing (after settle, or when giving the message back)."""
        self._held.pop(lease.key, None)

    def held(self) -> list[Lease]:
        """Every lease currently held."""
        return list(self._held.values())

    def __len__(self) -> int:
        return len(self._held)

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew due leases every interval until stopped."""
        while not stopping.is_set():
            try:
                await self.renew_due()
            except TRANSIENT as exc:  # the database is away: keep trying, each lease has half its timeout
                log.warning("lease.renew_failed", error=one_line(exc))
            except psycopg.Error as exc:  # a queue's table dropped, say: the other queues' leases go on
                log.warning("lease.renew_failed", error=one_line(exc), transient=False)
            await sleep_or_stop(stopping, self._interval)

    async def renew_due(self) -> None:
        """Extend every lease past half its visibility timeout; report those another worker took."""
        now = asyncio.get_running_loop().time()
        due: dict[tuple[str, float], list[Lease]] = defaultdict(list)
        for lease in self._held.values():
            if not lease.lost and lease.expires_at - now <= lease.vt_s / 2:
                due[(lease.message.queue, lease.vt_s)].append(lease)
        if not due:
            return
        async with self._pool.connection(timeout=5) as conn:
            for (queue, vt_s), leases in due.items():
                started = asyncio.get_running_loop().time()
                held = [(lease.message.msg_id, lease.message.read_ct) for lease in leases]
                renewed = await deliveries.extend(conn, queue, held, vt_s)
                for lease in leases:
                    if lease.message.msg_id in renewed:
                        lease.expires_at = started + vt_s
                        self.renewals += 1
                    elif lease.key in self._held:
                        lease.lost = True
                        self.lost += 1
                        log.warning(
                            "lease.lost",
                            queue=queue,
                            msg_id=lease.message.msg_id,
                            attempt=lease.message.read_ct,
                        )
                        lease.on_lost()
