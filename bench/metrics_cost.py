"""What the metrics endpoint costs a drain: the same burst drain with PGMQ_WORKER_METRICS_PORT set
and unset, interleaved A/B, printed as messages per second and the on/off ratio, never asserted.

    python bench/metrics_cost.py --messages 20000 --rounds 5
    python bench/metrics_cost.py --scrape-every 1 --database-url postgresql://postgres@127.0.0.1:5432/postgres

Each round runs one drain of each kind (bench/throughput.py's `throughput_run`: one send_batch of
N no-op messages, then `pgmq-worker run --burst` timed from its first job to its exit), the order
alternating between rounds so a machine that slows down or speeds up weighs on both alike. With
--scrape-every S, a thread scrapes /metrics every S seconds during the "on" drains (Fly scrapes
every 15 s: 1 s is a stress bound). The figure that counts is the median of the per-round ratios
of the work rates (on / off); a shared machine is noisy, so compare rounds before believing it.
The steadier figure printed last: what the settle observer (the only per-job work metrics add)
costs per call in process, against the worker CPU one message takes in the "off" drains.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput
from worker.metrics import WorkerMetrics
from worker.outcome import Succeeded
from worker.store.deliveries import Message

QUEUE = throughput.QUEUES["async"]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Scrapes /metrics every `every_s` seconds while running; counts the answers."""

    def __init__(self, port: int, every_s: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every_s = every_s
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    self.answered += 1
            except httpx.HTTPError:
                pass  # not up yet, or already gone


def observer_cost_us(calls: int = 200_000) -> float:
    """Microseconds one settle observer call takes (a counter and two histograms), in process."""
    metrics = WorkerMetrics([QUEUE])
    now = dt.datetime.now(dt.UTC)
    message = Message(queue=QUEUE, msg_id=1, read_ct=1, enqueued_at=now, vt=now, body={})
    outcome = Succeeded(None)
    started = time.perf_counter()
    for _ in range(calls):
        metrics.observe(message, outcome, 1.5)
    return (time.perf_counter() - started) / calls * 1e6


def rate(row: throughput.ThroughputRow) -> float:
    """Messages per second of the work phase (first job -> exit), start-up left out."""
    assert row.work_s, row.failures
    return row.messages / row.work_s


def drain(db_url: str, args: argparse.Namespace, *, on: bool) -> tuple[throughput.ThroughputRow, int]:
    """One burst drain, the endpoint served (and scraped, with --scrape-every) when `on`."""
    if not on:
        return throughput.throughput_run(
            db_url, QUEUE, args.messages, args.concurrency, settings={}, notify_trigger="worker"
        ), 0
    port = free_port()
    settings = {"PGMQ_WORKER_METRICS_PORT": str(port), "PGMQ_WORKER_METRICS_HOST": "127.0.0.1"}
    scraper = Scraper(port, args.scrape_every or 3600.0)
    with scraper:
        row = throughput.throughput_run(
            db_url, QUEUE, args.messages, args.concurrency, settings=settings, notify_trigger="worker"
        )
    return row, scraper.answered


def main(argv: list[str] | None = None) -> int:
    """Interleaved on/off drains; 1 when any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per drain (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="on/off pairs (default 5)")
    parser.add_argument("--concurrency", type=int, default=50, help="worker concurrency (default 50)")
    parser.add_argument("--scrape-every", type=float, default=0.0, help="seconds between scrapes (0: none)")
    parser.add_argument("--database-url", help="server to create the bench database on")
    args = parser.parse_args(argv)
    server = throughput.choose_server(args.database_url)
    failures: list[str] = []
    rates: dict[str, list[float]] = {"off": [], "on": []}
    ratios: list[float] = []
    scrapes = 0
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # the worker's CPU seconds per message
    with throughput.fresh_database(server) as db_url:
        throughput.print_environment(db_url, server, QUEUE, {})
        for n in range(args.rounds):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            this: dict[str, float] = {}
            for kind in order:
                row, answered = drain(db_url, args, on=kind == "on")
                scrapes += answered
                failures += [f"round {n + 1} {kind}: {f}" for f in row.failures]
                if row.failures:
                    continue
                this[kind] = rate(row)
                cpu[kind].append(row.cpu_s / row.messages)
                rates[kind].append(this[kind])
            if len(this) == 2:
                ratios.append(this["on"] / this["off"])
                off, on = this["off"], this["on"]
                print(f"round {n + 1}: off {off:8.0f} msg/s  on {on:8.0f} msg/s  on/off {ratios[-1]:.3f}")
    if cpu["off"] and cpu["on"]:
        off_us, on_us = statistics.median(cpu["off"]) * 1e6, statistics.median(cpu["on"]) * 1e6
        cost = observer_cost_us()
        share = cost / off_us * 100
        print(
            f"\nworker CPU per message: off {off_us:.0f} us, on {on_us:.0f} us (on/off {on_us / off_us:.3f})"
        )
        print(f"observer: {cost:.2f} us per settle in process, {share:.2f} % of an 'off' message's CPU")
    if ratios:
        off, on, mid = (
            statistics.median(rates["off"]),
            statistics.median(rates["on"]),
            statistics.median(ratios),
        )
        print(f"\nmessages {args.messages}, concurrency {args.concurrency}, rounds {len(ratios)}")
        print(f"median off {off:8.0f} msg/s, on {on:8.0f} msg/s")
        print(f"on/off ratio: median {mid:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
        if args.scrape_every:
            print(f"scrapes answered during the 'on' drains: {scrapes}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
