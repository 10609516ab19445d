"""The worker's Prometheus series, in a registry of its own (never prometheus_client's global one).

Jobs are counted by a settle observer (`Settle.observe`) into plain per-queue tallies (counts
by outcome, two histograms' buckets) that the scrape's thread copies: counting a job costs the
loop a dict lookup and two bisects, not prometheus_client's locks. Everything else is read from
the parts that own it when Prometheus scrapes, from the exporter's thread: in flight from
`Slots`, lease renewals and losses from `Leases`, reconnects from `DatabaseTrouble` and the
loop's lag from `LoopWatch`; webhook results are counted by a `Webhooks` observer. Those are
plain numbers; the hot path pays nothing for a scrape. The names and labels are a contract
(docs/how-to/metrics.md).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.outcome import Outcome
from worker.store.deliveries import Message

if TYPE_CHECKING:
    from worker.health import LoopWatch
    from worker.leases import Leases
    from worker.slots import Slots
    from worker.trouble import DatabaseTrouble

# Outcomes each queue's counter starts at 0 for, so rate() and increase() see the first job.
OUTCOMES = ("succeeded", "retried", "dead_lettered", "released", "deferred", "cancelled")
WEBHOOK_RESULTS = ("delivered", "failed", "refused")  # what worker.webhooks tells its observers
# Handler time and queue wait: from a no-op job's milliseconds to an LLM pipeline's minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def package_version() -> str:
    """This distribution's version ("unknown" when run from a source tree that is not installed)."""
    try:
        return version("pgmq-worker")
    except PackageNotFoundError:
        return "unknown"


class Spread:
    """One histogram's buckets, counted on the event loop; read (copied) by the scrape's thread.

    Not prometheus_client's Histogram: that takes a lock and walks every bucket on each
    observation, several times what the rest of a no-op job's settle costs the loop.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value in the first bucket whose bound is at least it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs ending with +Inf, as the text format has them."""
        counts, running, found = list(self.counts), 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            found.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return found


class QueueTally:
    """One queue's settled deliveries: by outcome, their handler time, their wait."""

    __slots__ = ("duration", "outcomes", "wait")

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.duration = Spread(DURATION_BUCKETS)
        self.wait = Spread(WAIT_BUCKETS)


class WorkerMetrics:
    """The registry and the job series; `observe` is the settle observer that feeds them."""

    def __init__(self, queues: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._tallies = {queue: QueueTally() for queue in queues}
        self.webhooks = dict.fromkeys(WEBHOOK_RESULTS, 0)  # events by final result (webhook_ended)
        self.registry.register(_Jobs(self._tallies))

    def observe(self, message: Message, outcome: Outcome, duration_ms: float) -> None:
        """A settle landed: count it, with its handler time and (first delivery) its wait."""
        metric = outcome.metric
        if metric is None:  # a parent waiting for its children has not finished
            return
        tally = self._tallies.get(message.queue)
        if tally is None:
            tally = self._tallies[message.queue] = QueueTally()
        tally.outcomes[metric] = tally.outcomes.get(metric, 0) + 1
        duration_s = duration_ms / 1000
        tally.duration.observe(duration_s)
        if message.read_ct == 1:  # a retry's wait would hold its earlier attempts and backoff
            started = time.time() - duration_s  # the settle lands right after the handler ends
            tally.wait.observe(max(started - message.enqueued_at.timestamp(), 0.0))

    def webhook_ended(self, _event: object, result: str) -> None:
        """A webhook event's delivery ended (the Webhooks observer): count its result."""
        self.webhooks[result] = self.webhooks.get(result, 0) + 1

    def watch(
        self,
        *,
        queues: Sequence[str],
        slots: Slots,
        leases: Leases,
        trouble: DatabaseTrouble,
        loop: LoopWatch,
        info: Mapping[str, str],
    ) -> None:
        """Export what the parts keep, read at each scrape."""
        self.registry.register(_Parts(queues, slots, leases, trouble, self.webhooks, loop, info))


class _Jobs(Collector):
    """pgmq_worker_jobs_total and the two histograms, from each queue's tally."""

    def __init__(self, tallies: dict[str, QueueTally]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Metric]:
        """Every queue's counts (copied: the loop goes on counting meanwhile)."""
        jobs = CounterMetricFamily(
            "pgmq_worker_jobs",
            "Deliveries settled by this worker, by queue and outcome.",
            labels=["queue", "outcome"],
        )
        duration = HistogramMetricFamily(
            "pgmq_worker_job_duration_seconds", "Handler time of each settled delivery.", labels=["queue"]
        )
        wait = HistogramMetricFamily(
            "pgmq_worker_job_wait_seconds",
            "From a message's enqueue to its first delivery's start.",
            labels=["queue"],
        )
        for queue, tally in sorted(dict(self._tallies).items()):
            for outcome, count in dict(tally.outcomes).items():
                jobs.add_metric([queue, outcome], count)
            duration.add_metric([queue], tally.duration.buckets(), tally.duration.total)
            wait.add_metric([queue], tally.wait.buckets(), tally.wait.total)
        yield from (jobs, duration, wait)


class _Parts(Collector):
    """Series read from the parts' own counts when Prometheus scrapes."""

    def __init__(  # noqa: PLR0917  one of each part, named
        self,
        queues: Sequence[str],
        slots: Slots,
        leases: Leases,
        trouble: DatabaseTrouble,
        webhooks: dict[str, int],
        loop: LoopWatch,
        info: Mapping[str, str],
    ) -> None:
        self._queues = list(queues)
        self._slots = slots
        self._leases = leases
        self._trouble = trouble
        self._webhooks = webhooks
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
        for result, count in dict(self._webhooks).items():
            webhooks.add_metric([result], count)
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
