"""Fan-out / fan-in: children with their own timeout and attempts, a cap, partial success, deadlines."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from queues import Contract, pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, job
from worker import Backoff, Context, Registry, WorkerError, handler
from worker.fanout import FanIn, policy, required

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


class Item(BaseModel):
    n: int
    behave: str = "ok"  # ok | fail | slow


ITEM = Contract("fan_child", Item)


def children(conn: psycopg.Connection[Any], parent_id: Any) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT child_index, status, attempts, result, error FROM pgmq_worker.jobs"
        " WHERE parent_id = %s ORDER BY child_index",
        (parent_id,),
    )
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def child_handler(reg: Registry, log: list[tuple[str, int]], peak: list[int]) -> None:
    """Children: `ok` returns n*n, `fail` raises, `slow` sleeps past any short timeout."""
    running = [0]
    lock = threading.Lock()

    @handler(ITEM, registry=reg, backoff=FAST, max_attempts=5, timeout=30)
    async def child(payload: Item, ctx: Context) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            log.append((payload.behave, payload.n))
            await asyncio.sleep(0.05)
            if payload.behave == "fail":
                raise RuntimeError(f"item {payload.n} cannot be made")
            if payload.behave == "slow":
                await asyncio.sleep(5)
            return payload.n * payload.n
        finally:
            with lock:
                running[0] -= 1


def test_partial_success_reports_every_child_and_the_parent_resumes_after_earlier_steps(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """6 children (3 ok, 2 failing, 1 timing out), 2 at a time, 2 attempts each, 50% required.

    The parent succeeds with each child's outcome and "3 of 6 succeeded (2 failed, 1 timed
    out)"; its step before the fan-out ran once; waking up was not counted as an attempt.
    """
    child_runs: list[tuple[str, int]] = []
    peak = [0]
    child_handler(reg, child_runs, peak)
    planned: list[int] = []
    attempts_seen: list[int] = []

    def plan(count: int) -> list[dict[str, Any]]:
        planned.append(count)
        kinds = ["ok", "fail", "ok", "slow", "fail", "ok"]
        return [{"n": i, "behave": kinds[i]} for i in range(count)]

    @handler("fan_parent", registry=reg, backoff=FAST, steps=("plan", "children", "report"))
    async def parent(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        attempts_seen.append(ctx.attempt)
        items = await ctx.step("plan", plan, payload["count"])
        batch = await ctx.fan_out(
            "children", ITEM, items, timeout=0.4, max_attempts=2, max_running=2, min_succeeded=0.5
        )
        return {"summary": batch.summary, "squares": batch.results, "fan_in": batch.as_json()}

    for q in ("fan_parent", "fan_child"):
        pgmq.ensure_queue(conn, q)
    msg_id = pgmq.send(conn, "fan_parent", {"count": 6})
    burst_worker(reg)

    row = job(conn, "fan_parent", msg_id)
    assert row["status"] == "succeeded", row["error"]
    result = row["result"]
    assert result["summary"] == "3 of 6 succeeded (2 failed, 1 timed out)"
    assert result["squares"] == [0, 4, 25]
    fan_in = result["fan_in"]
    assert [(c["index"], c["status"], c["attempts"], c["timed_out"]) for c in fan_in["children"]] == [
        (0, "succeeded", 1, False),
        (1, "dead", 2, False),
        (2, "succeeded", 1, False),
        (3, "dead", 2, True),
        (4, "dead", 2, False),
        (5, "succeeded", 1, False),
    ]
    assert fan_in["children"][1]["error"]["message"] == "item 1 cannot be made"
    assert "traceback" not in fan_in["children"][1]["error"]  # the child's own row keeps it
    assert planned == [6]  # the step before the fan-out ran once
    assert attempts_seen == [1, 1]  # spawned, then resumed: one attempt
    steps = conn.execute(
        "SELECT name, status, attempts FROM pgmq_worker.job_steps WHERE job_id = %s ORDER BY name",
        (row["id"],),
    ).fetchall()
    assert steps == [("children", "done", 1), ("plan", "done", 1)]  # collecting is not a second start
    assert peak[0] <= 2  # max_running
    twice = [("fail", 1), ("fail", 1), ("slow", 3), ("slow", 3), ("fail", 4), ("fail", 4)]
    assert sorted(child_runs) == sorted([("ok", 0), ("ok", 2), ("ok", 5), *twice])  # max_attempts=2, not 5
    assert (row["progress"], row["step"]) == (100, "children")
    assert [(c["status"], c["attempts"]) for c in children(conn, row["id"])][:2] == [
        ("succeeded", 1),
        ("dead", 2),
    ]
    assert len(dead(conn, "fan_child")) == 3
    assert pgmq.metrics(conn, "fan_parent").depth == 0


def test_too_few_successes_dead_letter_the_parent_with_the_summary(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Default policy: every child must succeed; one failure makes the parent dead (FanOutFailed)."""
    child_handler(reg, [], [0])

    @handler("fan_strict", registry=reg, backoff=FAST)
    async def strict(payload: dict[str, Any], ctx: Context) -> None:
        await ctx.fan_out("items", ITEM, [Item(n=1), Item(n=2, behave="fail")], max_attempts=1)

    for q in ("fan_strict", "fan_child"):
        pgmq.ensure_queue(conn, q)
    msg_id = pgmq.send(conn, "fan_strict", {})
    burst_worker(reg)
    row = job(conn, "fan_strict", msg_id)
    assert row["status"] == "dead"
    assert row["error"]["type"] == "FanOutFailed"
    assert row["error"]["message"] == "fan-out 'items': 1 of 2 succeeded (1 failed); at least 2 needed"
    assert row["detail"] == {"children": 2, "finished": 2, "succeeded": 1, "failed": 1}


def test_the_deadline_cancels_children_that_never_ran(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """No worker serves the children's queue: at the deadline the parent wakes, cancels the sent
    child (its message deleted), drops the held-back ones, and reports all three as cancelled."""

    @handler("fan_orphan", registry=reg, backoff=FAST)
    async def orphan(payload: dict[str, Any], ctx: Context) -> str:
        batch = await ctx.fan_out(
            "items", "fan_nobody", [{"n": i} for i in range(3)], max_running=1, deadline=1.0, min_succeeded=0
        )
        return batch.summary

    for q in ("fan_orphan", "fan_nobody"):
        pgmq.ensure_queue(conn, q)
    msg_id = pgmq.send(conn, "fan_orphan", {})
    burst_worker(reg, timeout=20)
    row = job(conn, "fan_orphan", msg_id)
    assert (row["status"], row["result"]) == ("succeeded", "0 of 3 succeeded (3 cancelled)")
    [sent] = children(conn, row["id"])  # max_running=1: only one was ever sent
    assert sent["status"] == "cancelled"
    assert sent["error"]["type"] == "FanOutDeadline"
    assert pgmq.metrics(conn, "fan_nobody").depth == 0  # its message is gone too
    cur = conn.execute("SELECT count(*) FROM pgmq_worker.fan_out_pending")
    assert cur.fetchone() == (0,)


def test_a_child_held_by_a_crashed_worker_reappears_and_the_parent_finishes(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A worker read a child and died without settling it: after its visibility timeout another
    worker runs it, and that settle wakes the parent."""
    child_handler(reg, [], [0])
    spawned = threading.Event()

    @handler("fan_crash", registry=reg, backoff=FAST)
    async def parent(payload: dict[str, Any], ctx: Context) -> list[Any]:
        spawned.set()
        batch = await ctx.fan_out("items", ITEM, [Item(n=3), Item(n=4)])
        return batch.results

    for q in ("fan_crash", "fan_child"):
        pgmq.ensure_queue(conn, q)
    msg_id = pgmq.send(conn, "fan_crash", {})
    # First a worker that only runs the parent: it spawns and parks it.
    parent_only = Registry()
    parent_only.add(reg.get("fan_crash"))
    with pytest.raises(TimeoutError):
        burst_worker(parent_only, timeout=1.5)  # the parent waits: the burst cannot end
    assert spawned.is_set()
    # The "crashed" worker: reads one child (1 s visibility) and never settles it.
    taken = conn.execute("SELECT msg_id FROM pgmq.read('fan_child', 1, 1)").fetchall()
    assert len(taken) == 1
    burst_worker(reg, timeout=20)
    row = job(conn, "fan_crash", msg_id)
    assert (row["status"], row["result"]) == ("succeeded", [9, 16])
    assert [c["attempts"] for c in children(conn, row["id"])].count(2) == 1  # the crashed delivery counted


def test_a_finished_fan_out_is_not_spawned_again_on_retry(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A step after the fan-out fails once: the retry gets the stored fan-in; children ran once."""
    runs: list[tuple[str, int]] = []
    child_handler(reg, runs, [0])
    after: list[int] = []

    @handler("fan_retry", registry=reg, backoff=FAST)
    async def parent(payload: dict[str, Any], ctx: Context) -> int:
        batch = await ctx.fan_out("items", ITEM, [Item(n=i) for i in range(4)])
        after.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("the step after the fan-out failed")
        return sum(batch.results)

    for q in ("fan_retry", "fan_child"):
        pgmq.ensure_queue(conn, q)
    msg_id = pgmq.send(conn, "fan_retry", {})
    burst_worker(reg)
    assert job(conn, "fan_retry", msg_id)["result"] == 0 + 1 + 4 + 9
    assert after == [1, 2]
    assert len(runs) == 4


def test_bad_children_are_refused_before_anything_is_sent(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A payload that fails the child contract dead-letters the parent (InvalidPayload); an unknown
    child queue is a failed attempt; neither sends a child."""

    @handler("fan_bad", registry=reg, backoff=FAST, max_attempts=1)
    async def bad(payload: dict[str, Any], ctx: Context) -> None:
        if payload["case"] == "invalid":
            await ctx.fan_out("items", ITEM, [{"n": 1}, {"n": "two"}])
        else:
            await ctx.fan_out("items", "fan_missing_queue", [{"n": 1}])

    for q in ("fan_bad", "fan_child"):
        pgmq.ensure_queue(conn, q)
    invalid = pgmq.send(conn, "fan_bad", {"case": "invalid"})
    missing = pgmq.send(conn, "fan_bad", {"case": "missing"})
    burst_worker(reg)
    row = job(conn, "fan_bad", invalid)
    assert (row["status"], row["error"]["type"]) == ("dead", "InvalidPayload")
    assert "fan_child" in row["error"]["message"]
    row = job(conn, "fan_bad", missing)
    assert (row["status"], row["error"]["type"]) == ("dead", "UnknownQueue")
    assert "fan_missing_queue" in row["error"]["message"]
    assert pgmq.metrics(conn, "fan_child").depth == 0
    assert conn.execute("SELECT count(*) FROM pgmq_worker.fan_outs").fetchone() == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "a fan-out has 1-10000 children, got 0"),
        ({"timeout": 0}, "timeout must be positive, got 0"),
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1, got 0"),
        ({"max_running": 1.5}, "max_running must be an integer >= 1, got 1.5"),
        ({"deadline": -1}, "deadline must be positive, got -1"),
        ({"min_succeeded": 5}, "min_succeeded is a count (0-4) or a share (0.0-1.0), got 5"),
        ({"min_succeeded": 1.5}, "min_succeeded is a count (0-4) or a share (0.0-1.0), got 1.5"),
        ({"min_succeeded": True}, "min_succeeded is a count (0-4) or a share (0.0-1.0), got True"),
    ],
)
def test_bad_policies_are_refused_with_the_argument_named(kwargs: dict[str, Any], message: str) -> None:
    """Each bad argument gets a ValueError naming it."""
    args: dict[str, Any] = {
        "timeout": None,
        "max_attempts": None,
        "max_running": None,
        "deadline": 60,
        "min_succeeded": None,
    }
    count = kwargs.pop("count", 4)
    args.update(kwargs)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        policy(count, **args)


def test_required_successes() -> None:
    """None means all; an int is a count; a float is a share, rounded up."""
    assert (required(None, 14), required(12, 14), required(0.8, 14), required(1.0, 14)) == (14, 12, 12, 14)
    assert required(0.5, 3) == 2


def test_fan_in_round_trips_through_json() -> None:
    """What a finished fan-out step stores comes back equal."""
    fan_in = FanIn.of("x", 2, [], "deadline")
    assert FanIn.from_json(fan_in.as_json()) == fan_in
    assert fan_in.summary == "0 of 2 succeeded (2 cancelled)"


def test_fan_out_outside_a_worker_says_so() -> None:
    """Without a job row (a handler called directly) fan_out cannot park: a clear error."""
    ctx = Context.for_test("q", max_attempts=1)
    with pytest.raises(WorkerError, match=r"ctx\.fan_out needs a job row"):
        asyncio.run(ctx.fan_out("items", "q", [{"n": 1}]))
