"""The worker's Prometheus series, in a registry of its own (never prometheus_client's global one).

Jobs are counted by a settle observer (`Settle.observe`): one counter and two histograms per
queue, their children looked up once. Everything else is read from the parts that own it when
Prometheus scrapes, from the exporter's thread: in flight from `Slots`, lease renewals and losses
from `Leases`, reconnects from `DatabaseTrouble`, webhook results from `Webhooks`, and the loop's
lag from `LoopWatch`. Those are plain numbers their owners keep; the hot path pays nothing for a
scrape. The names and labels are a contract (docs/how-to/metrics.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.outcome import Outcome
from worker.store.deliveries import Message

if TYPE_CHECKING:
    from worker.health import LoopWatch
    from worker.leases import Leases
    from worker.slots import Slots
    from worker.trouble import DatabaseTrouble
    from worker.webhooks import Webhooks

# Outcomes each queue's counter starts at 0 for, so rate() and increase() see the first job.
OUTCOMES = ("succeeded", "retried", "dead_lettered", "released", "deferred", "cancelled")
# Handler time and queue wait: from a no-op job's milliseconds to an LLM pipeline's minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def package_version() -> str:
    """This distribution's version ("unknown" when run from a source tree that is not installed)."""
    try:
        return version("pgmq-worker")
    except PackageNotFoundError:
        return "unknown"


class WorkerMetrics:
    """The registry and the job series; `observe` is the settle observer that feeds them."""

    def __init__(self, queues: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._jobs = Counter(
            "pgmq_worker_jobs",
            "Deliveries settled by this worker, by queue and outcome.",
            ["queue", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "pgmq_worker_job_duration_seconds",
            "Handler time of each settled delivery.",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._wait = Histogram(
            "pgmq_worker_job_wait_seconds",
            "From a message's enqueue to its first delivery's start.",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        for queue in queues:
            for outcome in OUTCOMES:
                self._child(queue, outcome)

    def _child(self, queue: str, outcome: str) -> tuple[Any, Any, Any]:
        key = (queue, outcome)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (
                self._jobs.labels(queue, outcome),
                self._duration.labels(queue),
                self._wait.labels(queue),
            )
        return found

    def observe(self, message: Message, outcome: Outcome, duration_ms: float) -> None:
        """A settle landed: count it, with its handler time and (first delivery) its wait."""
        metric = outcome.metric
        if metric is None:  # a parent waiting for its children has not finished
            return
        jobs, duration, wait = self._child(message.queue, metric)
        jobs.inc()
        duration_s = duration_ms / 1000
        duration.observe(duration_s)
        if message.read_ct == 1:  # a retry's wait would hold its earlier attempts and backoff
            started = time.time() - duration_s  # the settle lands right after the handler ends
            wait.observe(max(started - message.enqueued_at.timestamp(), 0.0))

    def watch(
        self,
        *,
        queues: Sequence[str],
        slots: Slots,
        leases: Leases,
        trouble: DatabaseTrouble,
        hooks: Webhooks,
        loop: LoopWatch,
        info: Mapping[str, str],
    ) -> None:
        """Export what the parts keep, read at each scrape."""
        self.registry.register(_Parts(queues, slots, leases, trouble, hooks, loop, info))


class _Parts(Collector):
    """Series read from the parts' own counts when Prometheus scrapes."""

    def __init__(  # noqa: PLR0917  one of each part, named
        self,
        queues: Sequence[str],
        slots: Slots,
        leases: Leases,
        trouble: DatabaseTrouble,
        hooks: Webhooks,
        loop: LoopWatch,
        info: Mapping[str, str],
    ) -> None:
        self._queues = list(queues)
        self._slots = slots
        self._leases = leases
        self._trouble = trouble
        self._hooks = hooks
        self._loop = loop
        self._info = dict(info)

    def collect(self) -> Iterator[Metric]:
        """One value of each series, as the parts hold them now."""
        in_flight = GaugeMetricFamily(
            "pgmq_worker_in_flight", "Deliveries this worker holds, by queue.", labels=["queue"]
        )
        held = self._slots.in_flight_by_queue()
        for queue in sorted({*self._queues, *held}):
            in_flight.add_metric([queue], held.get(queue, 0))
        yield in_flight
        yield CounterMetricFamily(
            "pgmq_worker_lease_renewals", "Leases renewed by the heartbeat.", value=self._leases.renewals
        )
        yield CounterMetricFamily(
            "pgmq_worker_leases_lost",
            "Leases the heartbeat found taken by another delivery (the handler was stopped).",
            value=self._leases.lost,
        )
        yield CounterMetricFamily(
            "pgmq_worker_db_reconnects",
            "Times the read loop got through to the database again after failing.",
            value=self._trouble.reconnects,
        )
        webhooks = CounterMetricFamily(
            "pgmq_worker_webhook_deliveries", "Webhook events by final result.", labels=["result"]
        )
        results = dict(self._hooks.results)
        for result in ("delivered", "failed", "refused"):
            webhooks.add_metric([result], results.get(result, 0))
        yield webhooks
        yield GaugeMetricFamily(
            "pgmq_worker_event_loop_lag_seconds",
            "How long ago the event loop last answered (measured from another thread).",
            value=self._loop.lag(),
        )
        info = GaugeMetricFamily(
            "pgmq_worker_info",
            "This worker: version, pgmq version and wake-up mode.",
            labels=sorted(self._info),
        )
        info.add_metric([self._info[k] for k in sorted(self._info)], 1)
        yield info
