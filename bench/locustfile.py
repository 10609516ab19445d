"""A Locust load test of the web path a browser takes: POST a job, follow its event stream, GET it.

Against `pgmq-worker web` and a worker on the same database (the `text_stats` reference handler):

    DATABASE_URL=... pgmq-worker migrate
    DATABASE_URL=... pgmq-worker web --port 8000 &
    DATABASE_URL=... pgmq-worker run &
    locust -f bench/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

Each user, in a loop: `POST /jobs/text_stats`, `GET /jobs/{id}/events` read to its end (the
server ends the stream once the job has finished), then `GET /jobs/{id}`. Locust prints requests/s
and percentiles per endpoint (the stream's time is from the request to the stream's end, so it
includes the job's queueing and run time); at the end this file prints p50/p95/p99 per endpoint
and the most event streams held open at once. Without a JWT secret the web process must be on
loopback; with one, set PGMQ_BENCH_TOKEN to a user's access token.

Locust is in the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from locust import HttpUser, between, events, task

QUEUE = "text_stats"
TEXT = "The quick brown fox jumps over the lazy dog while the lazy dog sleeps in the afternoon sun."


class Streams:
    """How many event streams are open now, and the most that were at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self.peak = 0

    def opened(self) -> None:
        """A stream's headers arrived."""
        with self._lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        """A stream ended (or failed)."""
        with self._lock:
            self.open -= 1


STREAMS = Streams()  # one load-test process's count (locust runs one process unless --processes)


class JobUser(HttpUser):
    """Submits a job, watches it to the end over SSE, then reads its final state."""

    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        """The access token, when the web process checks one."""
        token = os.environ.get("PGMQ_BENCH_TOKEN")
        if token:
            self.client.headers["authorization"] = f"Bearer {token}"

    @task
    def submit_follow_read(self) -> None:
        """POST, the stream to its end, GET."""
        with self.client.post(f"/jobs/{QUEUE}", json={"text": TEXT}, catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"status {response.status_code}")
                return
            body: dict[str, Any] = response.json()
        self._follow(body["events_url"])
        with self.client.get(body["status_url"], name="/jobs/[id]", catch_response=True) as response:
            if response.status_code != 200 or response.json().get("status") != "succeeded":
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    def _follow(self, url: str) -> None:
        with self.client.get(
            url, name="/jobs/[id]/events", stream=True, catch_response=True, timeout=120
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            STREAMS.opened()
            try:
                changes = sum(1 for line in response.iter_lines() if line.startswith(b"data:"))
            finally:
                STREAMS.closed()
            if changes == 0:
                response.failure("the stream ended without an event")


@events.quitting.add_listener
def _summary(environment: Any, **_kwargs: Any) -> None:
    stats = environment.stats
    print()
    print("| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for entry in sorted(stats.entries.values(), key=lambda e: (e.name, e.method)):
        cuts = [entry.get_response_time_percentile(p) for p in (0.5, 0.95, 0.99)]
        print(
            f"| {entry.method} {entry.name} | {entry.num_requests} | {entry.num_failures} "
            f"| {entry.total_rps:.1f} | {cuts[0]:.0f} | {cuts[1]:.0f} | {cuts[2]:.0f} |"
        )
    print(f"event streams held open at once: at most {STREAMS.peak}")
