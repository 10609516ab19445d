"""The worker's job webhooks: the sender as a worker builds it, each delivery recorded as a row.

Each try of a webhook event upserts its row of pgmq_worker.webhook_deliveries (the dashboard's
job page lists them) on a connection of the worker's pool, from the delivery's own background
task: the job never waits for it. A row that cannot be written (the database is away, the pool
has no connection within CONNECT_TIMEOUT_S, the role may not write the table) is logged by the
sender (`webhook.not_recorded`) and the delivery goes on: nothing a delivery does stops a worker.
An event of a job deleted meanwhile writes no row (worker.store.webhook_deliveries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from psycopg_pool import AsyncConnectionPool

from worker.settings import WorkerSettings
from worker.store import webhook_deliveries
from worker.store.webhook_deliveries import Delivery
from worker.webhooks import Webhooks

CONNECT_TIMEOUT_S = 5.0  # a record waits this long for a connection, then is logged as not written


class DeliveryRecords:
    """Writes each delivery's row on a connection of the pool."""

    def __init__(self, pool: AsyncConnectionPool, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.pool = pool
        self._connect_timeout_s = connect_timeout_s

    async def record(self, delivery: Delivery) -> None:
        """Upsert the delivery's row (errors are the sender's to log)."""
        async with self.pool.connection(timeout=self._connect_timeout_s) as conn:
            await webhook_deliveries.record(conn, delivery)


def job_webhooks(
    settings: WorkerSettings, pool: AsyncConnectionPool, watch: Callable[[asyncio.Task[None]], object]
) -> Webhooks:
    """The job webhooks' sender, its deliveries recorded and watched as side tasks."""
    secret = settings.webhook_secret
    return Webhooks(
        secret.get_secret_value() if secret else None,
        allow_private=settings.webhook_allow_private,
        timeout_s=settings.webhook_timeout.total_seconds(),
        max_tries=settings.webhook_max_tries,
        watch=watch,
        record=DeliveryRecords(pool).record,
    )
