"""Fixtures every database test may ask for: a registry of its own and a burst worker on its database."""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from db.connect import Target
from tests.support.helpers import run_burst
from worker.registry import Registry
from worker.runner import Worker


class BurstWorker(Protocol):
    """`burst_worker(registry, timeout=60, **settings)`: run a burst worker to completion."""

    def __call__(self, registry: Registry, *, timeout: float = 60, **settings: Any) -> Worker: ...


@pytest.fixture
def reg() -> Registry:
    """A registry of the test's own: its handlers are seen by no other test."""
    return Registry()


@pytest.fixture
def burst_worker(target: Target) -> BurstWorker:
    """Run a burst worker over the test's database until its queues are empty (helpers.run_burst)."""

    def run(registry: Registry, *, timeout: float = 60, **settings: Any) -> Worker:
        return run_burst(target, registry, timeout=timeout, **settings)

    return run
