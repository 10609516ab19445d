"""Reading a metrics endpoint as Prometheus would: the samples of one scrape, and a probe's status."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Every sample of GET /metrics, keyed by (sample name, labels)."""
    response = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None when the scrape does not have it)."""
    return samples.get((name, frozenset(labels.items())))


def status(port: int, path: str, host: str = "127.0.0.1") -> int:
    """The status of GET `path` (a probe: /livez, /readyz)."""
    return httpx.get(f"http://{host}:{port}{path}", timeout=10).status_code


def until(check: Callable[[], bool], timeout: float = 15, every: float = 0.1) -> None:
    """Wait until `check()` is true (an endpoint not up yet counts as false); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not true within {timeout}s: {check}"
        time.sleep(every)
