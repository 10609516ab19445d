"""Side tasks are supervised (issue 18 §4): one that dies unexpectedly stops the worker loudly.

Lease renewal, the listener, the ack flusher, a webhook delivery: made to raise by patching our
own code (the database stays real). The worker logs `worker.side_task_failed` with the
traceback, releases what it holds (visible again at once, as on shutdown) and run() raises
SideTaskFailed; `pgmq-worker run` exits non-zero with one `Error:` line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import psycopg
import pytest

from db.connect import Target
from queues import enqueue, pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import captured, job, make_worker, rows
from tests.support.processes import REPO, worker_process
from tests.support.runtime_handlers import GUARDED, MIXED
from worker import Context, Registry, handler
from worker import wakeup as wakeup_module
from worker.errors import SideTaskFailed
from worker.leases import Leases
from worker.settle import Acks
from worker.webhooks import Webhooks


def break_side_task(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make one of the worker's own side tasks die of a bug nobody expected."""
    if name == "leases":
        renew_due = Leases.renew_due

        async def broken_renewal(self: Leases) -> None:
            if len(self):  # once it holds a lease
                raise RuntimeError("lease renewer bug")
            await renew_due(self)

        monkeypatch.setattr(Leases, "renew_due", broken_renewal)
    elif name == "acks":

        async def broken_flush(self: Acks, *args: Any) -> None:
            raise RuntimeError("ack flusher bug")

        monkeypatch.setattr(Acks, "_flush", broken_flush)
    elif name == "listener":

        async def broken_listen(*args: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.5)
            raise RuntimeError("listener bug")

        monkeypatch.setattr(wakeup_module, "listen", broken_listen)
    else:

        async def broken_delivery(self: Webhooks, *args: Any) -> None:
            raise RuntimeError("webhook delivery bug")

        monkeypatch.setattr(Webhooks, "_deliver", broken_delivery)


@pytest.mark.parametrize("name", ["leases", "acks", "listener", "webhook"])
def test_a_side_task_that_dies_stops_the_worker_and_releases_its_messages(
    target: Target,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    reg: Registry,
    burst_worker: BurstWorker,
) -> None:
    """The side task raises: the worker does not run on without it. run() raises SideTaskFailed,
    the failure is logged with its traceback, and every message it held is visible again at once
    (not after its visibility timeout); a healthy worker then finishes them."""

    @handler("guarded", registry=reg, visibility_timeout=60)
    async def guarded(payload: dict[str, Any], ctx: Context) -> None:
        if payload["n"]:
            await asyncio.sleep(30)  # held (with its lease) until the worker lets go

    pgmq.ensure_queue(conn, "guarded")
    hook = "http://127.0.0.1:9/hook" if name == "webhook" else None
    sent = [enqueue(conn, "guarded", {"n": n}, webhook_url=hook) for n in (0, 1)]
    break_side_task(monkeypatch, name)
    worker = make_worker(
        target, reg, burst=False, webhook_secret="whsec_" + "A" * 32, webhook_allow_private=True
    )
    with captured() as logs, pytest.raises(SideTaskFailed, match="task failed"):
        asyncio.run(asyncio.wait_for(worker.run(), 20))
    [failed] = [e for e in logs if e["event"] == "worker.side_task_failed"][:1]
    assert "bug" in failed["error"]
    assert isinstance(failed["exc_info"], RuntimeError)
    left = rows(conn, "guarded")
    assert [r["message"] for r in left][-1] == {"n": 1}  # the held one was not finished
    assert all(r["visible"] for r in left)  # released: visible now, not in 60 s
    assert all(job(conn, "guarded", r["msg_id"])["status"] == "queued" for r in left)

    monkeypatch.undo()
    reg = Registry()

    @handler("guarded", registry=reg)
    async def healthy(payload: dict[str, Any], ctx: Context) -> None:
        return None

    burst_worker(reg, timeout=30)
    assert rows(conn, "guarded") == []
    assert {job(conn, "guarded", e.msg_id)["status"] for e in sent} == {"succeeded"}


def test_pgmq_worker_run_exits_non_zero_when_a_side_task_dies(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A real `pgmq-worker run` whose lease renewer dies: exit status 1, the
    `worker.side_task_failed` line with its traceback, one `Error:` line, the message released."""
    pgmq.ensure_queue(conn, GUARDED)
    pgmq.send(conn, GUARDED, {"sleep": 30})
    argv, env = worker_process(db_url, "tests.support.runtime_handlers", PGMQ_WORKER_HEARTBEAT_INTERVAL="0.2")
    env["PGMQW_TEST_BREAK_LEASES"] = "1"
    done = subprocess.run(
        [*argv, "--queue", GUARDED],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [
        json.loads(line)
        for line in done.stdout.splitlines() + done.stderr.splitlines()
        if line.startswith("{")
    ]
    [failed] = [e for e in lines if e.get("event") == "worker.side_task_failed"]
    assert failed["task"] == "leases"
    assert "RuntimeError: lease renewer bug" in failed["exception"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "leases" in errors[0], done.stderr[-3000:]
    [left] = rows(conn, GUARDED)
    assert left["visible"] and left["read_ct"] == 1


def test_a_burst_run_over_bad_jobs_among_good_ones_exits_0(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`pgmq-worker run --burst` over good jobs with bad ones among them (a result with a NUL, a
    handler that raises, one that calls sys.exit()): exit 0, every good job `succeeded`, every bad
    delivery `dead` with a readable error, nothing about a pooler."""
    pgmq.ensure_queue(conn, MIXED)
    kinds = ["ok", "nul", "ok", "raise", "ok", "exit", "ok"]
    sent = [enqueue(conn, MIXED, {"kind": kind, "n": i}) for i, kind in enumerate(kinds)]
    argv, env = worker_process(db_url, "tests.support.runtime_handlers", PGMQ_WORKER_LOG_LEVEL="info")
    done = subprocess.run(
        [*argv, "--queue", MIXED, "--burst", "--concurrency", "8"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pooler" not in done.stderr + done.stdout
    statuses = {kind: set() for kind in kinds}
    for kind, e in zip(kinds, sent, strict=True):
        row = job(conn, MIXED, e.msg_id)
        statuses[kind].add(row["status"])
        if kind != "ok":
            assert row["error"]["message"], row
    assert statuses == {"ok": {"succeeded"}, "nul": {"dead"}, "raise": {"dead"}, "exit": {"dead"}}
    assert rows(conn, MIXED) == []
