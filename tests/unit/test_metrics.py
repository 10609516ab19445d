"""The worker's series without a database: the tallies read as prometheus_client's own histogram
and counter would, each outcome has its label, and the loop watch sees a blocked loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from worker.health import LoopWatch
from worker.metrics import DURATION_BUCKETS, OUTCOMES, WorkerMetrics
from worker.outcome import Abandoned, DeadLetter, Deferred, ErrorInfo, RetryLater, Succeeded, Waiting
from worker.store.deliveries import Message

ERROR = ErrorInfo("E", "e", "")


def message(queue: str = "q", read_ct: int = 1, age_s: float = 0.0) -> Message:
    """A delivery enqueued `age_s` ago."""
    enqueued = datetime.now(UTC) - timedelta(seconds=age_s)
    return Message(queue=queue, msg_id=1, read_ct=read_ct, enqueued_at=enqueued, vt=enqueued, body={})


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample the registry exports."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


@given(st.lists(st.floats(min_value=0, max_value=4000, allow_nan=False), max_size=60))
def test_the_duration_histogram_reads_as_prometheus_clients_own(durations: list[float]) -> None:
    """For any handler times, the buckets, count and sum equal prometheus_client's Histogram's."""
    ours = WorkerMetrics(["q"])
    reference = CollectorRegistry()
    name = "pgmq_worker_job_duration_seconds"
    theirs = Histogram(name, "x", ["queue"], buckets=DURATION_BUCKETS, registry=reference).labels("q")
    for seconds in durations:
        ours.observe(message(read_ct=2), Succeeded(None), seconds * 1000)
        theirs.observe(seconds)
    mine = {k: v for k, v in samples(ours.registry).items() if k[0].startswith("pgmq_worker_job_duration")}
    expected = {k: v for k, v in samples(reference).items() if not k[0].endswith("_created")}
    assert mine.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(mine[key] - value) <= 1e-6 * max(1.0, abs(value)), key
    assert b"pgmq_worker_job_duration_seconds_bucket" in generate_latest(ours.registry)


def test_each_outcome_counts_under_its_label_and_a_waiting_parent_not_at_all() -> None:
    """succeeded, retried, deferred, dead_lettered, released: one each; Waiting is not counted."""
    metrics = WorkerMetrics(["q"])
    for outcome in (
        Succeeded(None),
        RetryLater(1.0, ERROR),
        Deferred(1.0, ERROR),
        DeadLetter("permanent", ERROR),
        Abandoned("shutdown"),
        Waiting(uuid4(), "f"),
    ):
        metrics.observe(message(), outcome, 1.0)
    counts = {
        dict(labels)["outcome"]: v
        for (name, labels), v in samples(metrics.registry).items()
        if name == "pgmq_worker_jobs_total"
    }
    assert counts == {o: (0 if o == "cancelled" else 1) for o in OUTCOMES}
    waits = samples(metrics.registry)[("pgmq_worker_job_wait_seconds_count", (("queue", "q"),))]
    assert waits == 5  # Waiting is not a finished delivery


def test_the_wait_is_the_first_deliverys_only() -> None:
    """A message enqueued 30 s ago waits ~30 s on its first delivery; its retry is not observed."""
    metrics = WorkerMetrics(["q"])
    metrics.observe(message(age_s=30), Succeeded(None), 0.0)
    metrics.observe(message(read_ct=2, age_s=90), Succeeded(None), 0.0)
    s = samples(metrics.registry)
    assert s[("pgmq_worker_job_wait_seconds_count", (("queue", "q"),))] == 1
    assert 29 < s[("pgmq_worker_job_wait_seconds_sum", (("queue", "q"),))] < 35


def test_a_queue_seen_first_at_a_settle_gets_its_series() -> None:
    """A queue not named at the start (a fan-out child's, say) is counted all the same."""
    metrics = WorkerMetrics([])
    metrics.observe(message(queue="late"), Succeeded(None), 2.0)
    assert (
        samples(metrics.registry)[("pgmq_worker_jobs_total", (("outcome", "succeeded"), ("queue", "late")))]
        == 1
    )


def test_the_loop_watch_lags_while_the_loop_is_blocked() -> None:
    """Read from another thread, the lag grows while the loop is blocked and falls back after."""
    watch = LoopWatch(every_s=0.05)
    seen: list[float] = []

    async def go() -> None:
        beat = asyncio.create_task(watch.run())
        await asyncio.sleep(0.2)
        seen.append(watch.lag())
        time.sleep(0.6)  # noqa: ASYNC251  blocks the loop: no beat
        seen.append(watch.lag())
        await asyncio.sleep(0.2)
        seen.append(watch.lag())
        beat.cancel()

    asyncio.run(go())
    assert seen[0] < 0.3 and seen[1] >= 0.5 and seen[2] < 0.3
