"""Partitioned queues (`@handler(..., partitioned=True)`): pgmq.create_partitioned with pg_partman.

Skipped where the server has no pg_partman, unless PGMQ_WORKER_REQUIRE_PARTMAN=1 (CI installs it).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from queues import pgmq, storage
from queues.errors import QueueStorageError
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, rows
from worker import Backoff, Context, Registry, handler
from worker.errors import HandlerRegistrationError

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


@pytest.fixture
def partman(conn: psycopg.Connection[Any]) -> None:
    """Skip without pg_partman on the server (fail instead under PGMQ_WORKER_REQUIRE_PARTMAN=1)."""
    if conn.execute(storage.PARTMAN_AVAILABLE).fetchone() is None:
        if os.environ.get("PGMQ_WORKER_REQUIRE_PARTMAN") == "1":
            pytest.fail("PGMQ_WORKER_REQUIRE_PARTMAN=1 but the server has no pg_partman")
        pytest.skip("the server has no pg_partman")


def partitioned(conn: psycopg.Connection[Any], queue: str) -> bool:
    """Whether the queue's table is a partitioned table."""
    row = conn.execute(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", (f"pgmq.q_{queue}",)
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.usefixtures("partman")
def test_the_worker_creates_a_partitioned_queue_and_drains_it(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Created with create_partitioned on start; every message handled once, its job succeeded."""
    seen: list[int] = []

    @handler("parted", registry=reg, partitioned=True, backoff=FAST)
    async def parted(payload: dict[str, Any], ctx: Context) -> int:
        if payload["i"] % 50 == 7 and ctx.attempt == 1:
            raise RuntimeError("once")  # a retry on a partitioned table: the lease-guarded hide
        seen.append(payload["i"])
        return payload["i"]

    burst_worker(reg, concurrency=4)  # creates the queue; nothing to do yet
    assert partitioned(conn, "parted")
    assert not partitioned(conn, "parted_dlq")  # the dead-letter queue stays plain
    # Across a partition boundary: pgmq makes 10,000 ids a partition.
    conn.execute("SELECT setval(pg_get_serial_sequence('pgmq.q_parted', 'msg_id'), 9900)")
    pgmq.send_batch(conn, "parted", [{"i": i} for i in range(300)])
    burst_worker(reg, concurrency=20)
    assert sorted(seen) == list(range(300))
    assert rows(conn, "parted") == []
    assert dead(conn, "parted") == []
    statuses = conn.execute(
        "SELECT status, count(*), max(attempts) FROM pgmq_worker.jobs WHERE queue = 'parted' GROUP BY status"
    ).fetchall()
    assert statuses == [("succeeded", 300, 2)]


def test_without_pg_partman_in_the_database_the_error_names_it(conn: psycopg.Connection[Any]) -> None:
    """Not created and not to be created: a clear error naming the extension, before any table."""
    if conn.execute(storage.PARTMAN_VERSION).fetchone() is not None:
        pytest.skip("pg_partman is already created in the template database")
    with pytest.raises(QueueStorageError, match="pg_partman"):
        storage.partman_version(conn, create=False)
    assert not pgmq.queue_exists(conn, "parted")


def test_partitioned_takes_only_a_bool(reg: Registry) -> None:
    """A typo'd option fails at registration, not at the worker's start."""
    with pytest.raises(HandlerRegistrationError, match="partitioned"):

        @handler("parted", registry=reg, partitioned="yes")  # type: ignore[arg-type]
        async def parted(payload: dict[str, Any], ctx: Context) -> None: ...


def test_a_queue_the_worker_creates_gets_its_autovacuum_settings(conn: psycopg.Connection[Any]) -> None:
    """The storage parameters (queues/storage.py) are set on the table ensure_queue creates."""
    pgmq.ensure_queue(conn, "tuned")
    row = conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'pgmq.q_tuned'::regclass").fetchone()
    assert row is not None
    assert f"autovacuum_vacuum_threshold={storage.QUEUE_DEAD_ROWS}" in row[0]
    assert "autovacuum_vacuum_scale_factor=0" in row[0]
