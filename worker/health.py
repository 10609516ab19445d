"""The worker's HTTP endpoint: /metrics, /livez and /readyz, answered from a thread.

- `/livez`: 200 while the event loop answers. `LoopWatch` beats on the loop every quarter second
  and the exporter's thread reads how long ago the last beat was: a `def` handler hogging the
  GIL or a blocking call in `async` code stops the beats, and the thread still answers 503 once
  the lag passes `loop_block_threshold` (a check on the loop itself could not).
- `/readyz`: 200 when the database answers (`SELECT 1` on the gauges' own connection) and the
  worker takes work; 503 while the database is unreachable, and from the first SIGTERM on (the
  drain), so a platform stops routing to it before the process exits.
- `/metrics`: the worker's registry (worker.metrics) with the queue gauges of every queue.

`Monitoring` is the part `_lifespan` holds when `PGMQ_WORKER_METRICS_PORT` is set. With
`--processes N` each worker process serves its own: port + `PGMQ_WORKER_PROCESS_INDEX`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from db.connect import Target
from queues.exporter import TEXT, Answer, Exporter, QueueGauges, metrics_route
from worker.errors import MetricsPortUnavailable
from worker.metrics import WorkerMetrics, package_version

if TYPE_CHECKING:
    from worker.leases import Leases
    from worker.settings import WorkerSettings
    from worker.settle import Settle
    from worker.signals import Stop
    from worker.slots import Slots
    from worker.trouble import DatabaseTrouble
    from worker.webhooks import Webhooks

BEAT_S = 0.25


class LoopWatch:
    """Beats on the event loop; any thread can ask how long ago the loop last ran a beat."""

    def __init__(self, every_s: float = BEAT_S) -> None:
        self.every_s = every_s
        self._beat = time.monotonic()

    async def run(self) -> None:
        """Beat until cancelled (the side tasks stop it after the drain: the loop answers during one)."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self.every_s)

    def lag(self) -> float:
        """Seconds since the loop last answered, past the beat interval itself."""
        return max(time.monotonic() - self._beat - self.every_s, 0.0)


class Monitoring:
    """The worker's metrics, its loop watch and the endpoint serving them with the health checks."""

    def __init__(self, settings: WorkerSettings, target: Target, queues: list[str], stops: Stop) -> None:
        assert settings.metrics_port is not None  # noqa: S101  made only when a port is set
        self.metrics = WorkerMetrics(queues)
        self.loop = LoopWatch()
        self.gauges = QueueGauges(target, cache_s=settings.metrics_queue_cache.total_seconds())
        self.metrics.registry.register(self.gauges)
        self._queues = queues
        self._stops = stops
        self._threshold_s = settings.loop_block_threshold.total_seconds()
        port = settings.metrics_port + settings.process_index if settings.metrics_port else 0
        self.exporter = Exporter(
            settings.metrics_host,
            port,
            {"/metrics": metrics_route(self.metrics.registry), "/livez": self.livez, "/readyz": self.readyz},
        )

    def watch(  # noqa: PLR0917  one of each part
        self,
        settle: Settle,
        slots: Slots,
        leases: Leases,
        trouble: DatabaseTrouble,
        hooks: Webhooks,
        pgmq: str,
        wakeup: str,
    ) -> None:
        """Count each settle, export the parts' own counts, and the info series."""
        settle.observe(self.metrics.observe)
        hooks.observe(self.metrics.webhook_ended)
        info = {"version": package_version(), "pgmq_version": pgmq, "wakeup": wakeup}
        self.metrics.watch(
            queues=self._queues,
            slots=slots,
            leases=leases,
            trouble=trouble,
            loop=self.loop,
            info=info,
        )

    def start(self) -> None:
        """Bind the port and serve; MetricsPortUnavailable (the worker does not start) if it cannot."""
        try:
            self.exporter.start()
        except OSError as exc:
            where = f"{self.exporter.host}:{self.exporter.requested_port}"
            raise MetricsPortUnavailable(
                f"the metrics endpoint cannot listen on {where}: {exc.strerror}"
            ) from exc

    def close(self) -> None:
        """Stop serving, then close the gauges' connection."""
        self.exporter.close()
        self.gauges.close()

    def livez(self) -> Answer:
        """200 while the event loop answers, 503 once it has been blocked past the threshold."""
        lag = self.loop.lag()
        if lag > self._threshold_s:
            return 503, TEXT, f"event loop blocked for {lag:.1f} s\n".encode()
        return 200, TEXT, b"ok\n"

    def readyz(self) -> Answer:
        """200 when the database answers and the worker takes work; 503 draining or without a database."""
        if self._stops.stopping.is_set():
            return 503, TEXT, b"draining\n"
        if not self.gauges.ping():
            return 503, TEXT, b"database unreachable\n"
        return 200, TEXT, b"ok\n"
