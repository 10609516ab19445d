"""Resumable steps: a finished step never runs again; retries and killed workers resume after it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from queues import pgmq
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, job
from worker import Backoff, Context, RateLimited, Registry, handler
from worker.errors import HandlerRegistrationError

FAST = Backoff(base=0.05, cap=0.2, jitter=0)


class Parsed(BaseModel):
    words: list[str]


def steps_of(conn: psycopg.Connection[Any], job_id: Any) -> dict[str, tuple[str, int, Any]]:
    cur = conn.execute(
        "SELECT name, status, attempts, output FROM pgmq_worker.job_steps WHERE job_id = %s", (job_id,)
    )
    return {name: (status, attempts, output) for name, status, attempts, output in cur.fetchall()}


def test_a_retry_resumes_at_the_failed_step_with_earlier_outputs(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Step 2 fails once: the retry skips step 1 (its stored output is used), reruns 2, runs 3."""
    calls: list[str] = []

    def fetch(text: str) -> str:  # a plain function: runs in the handler thread pool
        calls.append("fetch")
        return text.upper()

    async def parse(text: str, attempt: int) -> Parsed:
        calls.append("parse")
        if attempt == 1:
            raise RuntimeError("flaky parser")
        return Parsed(words=text.split())

    async def count(words: list[str]) -> tuple[int, str]:
        calls.append("count")
        return len(words), words[0]

    @handler("stepped", registry=reg, backoff=FAST, steps=("fetch", "parse", "count"))
    async def stepped(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        text = await ctx.step("fetch", fetch, payload["text"])
        parsed = await ctx.step("parse", parse, text, ctx.attempt)
        n, first = await ctx.step("count", count, parsed["words"])
        return {"n": n, "first": first}

    pgmq.ensure_queue(conn, "stepped")
    [msg_id] = [pgmq.send(conn, "stepped", {"text": "alpha beta gamma"})]
    burst_worker(reg)
    assert calls == ["fetch", "parse", "parse", "count"]
    row = job(conn, "stepped", msg_id)
    assert (row["status"], row["result"], row["progress"], row["step"]) == (
        "succeeded",
        {"n": 3, "first": "ALPHA"},
        100,
        "count",
    )
    assert steps_of(conn, row["id"]) == {
        "fetch": ("done", 1, "ALPHA BETA GAMMA"),
        "parse": ("done", 2, {"words": ["ALPHA", "BETA", "GAMMA"]}),
        "count": ("done", 1, [3, "ALPHA"]),  # a tuple comes back as JSON gives it, the first time too
    }


def test_a_step_that_keeps_failing_dead_letters_the_job(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A step's own max_attempts ends the job (dead, reason permanent) before the job's max_attempts."""
    runs: list[int] = []

    async def broken() -> None:
        runs.append(1)
        raise ValueError("always")

    @handler("doomed", registry=reg, backoff=FAST, max_attempts=10)
    async def doomed(payload: dict[str, Any], ctx: Context) -> None:
        await ctx.step("broken", broken, max_attempts=2)

    pgmq.ensure_queue(conn, "doomed")
    msg_id = pgmq.send(conn, "doomed", {})
    burst_worker(reg)
    assert len(runs) == 2
    [record] = dead(conn, "doomed")
    assert record["reason"] == "permanent" and "step 'broken' failed 2 times" in record["error"]["message"]
    row = job(conn, "doomed", msg_id)
    assert row["status"] == "dead" and steps_of(conn, row["id"])["broken"][0] == "failed"


def test_a_rate_limited_step_is_deferred_not_counted_against_its_attempts(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A step with max_attempts=1 hits a 429 twice: the job is deferred each time, the step runs a
    third time and succeeds, and its attempt count shows the one real attempt."""
    runs: list[int] = []

    async def call_provider() -> str:
        runs.append(1)
        if len(runs) <= 2:
            raise RateLimited(0.05, "HTTP 429")
        return "answer"

    @handler("limited_step", registry=reg, backoff=FAST, max_attempts=1)
    async def limited_step(payload: dict[str, Any], ctx: Context) -> str:
        return str(await ctx.step("call", call_provider, max_attempts=1))

    pgmq.ensure_queue(conn, "limited_step")
    msg_id = pgmq.send(conn, "limited_step", {})
    burst_worker(reg)
    assert len(runs) == 3
    row = job(conn, "limited_step", msg_id)
    assert (row["status"], row["result"], row["attempts"], row["deferrals"]) == ("succeeded", "answer", 3, 2)
    assert steps_of(conn, row["id"])["call"][:2] == ("done", 1)


def test_a_step_past_its_timeout_is_a_failed_attempt(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """A step slower than its timeout fails the attempt (StepTimeout recorded); the retry succeeds."""

    async def slow(attempt: int) -> str:
        await asyncio.sleep(5 if attempt == 1 else 0)
        return "ok"

    @handler("slowstep", registry=reg, backoff=FAST)
    async def slowstep(payload: dict[str, Any], ctx: Context) -> str:
        return str(await ctx.step("slow", slow, ctx.attempt, timeout=0.2))

    pgmq.ensure_queue(conn, "slowstep")
    msg_id = pgmq.send(conn, "slowstep", {})
    burst_worker(reg)
    row = job(conn, "slowstep", msg_id)
    assert (row["status"], row["attempts"], row["result"]) == ("succeeded", 2, "ok")
    assert steps_of(conn, row["id"])["slow"][:2] == ("done", 2)


def test_a_step_output_that_is_not_json_dead_letters(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """An output that cannot be stored is a programming error: dead-lettered at once, with the reason."""

    @handler("badout", registry=reg, backoff=FAST)
    async def badout(payload: dict[str, Any], ctx: Context) -> None:
        await ctx.step("s", object)

    pgmq.ensure_queue(conn, "badout")
    pgmq.send(conn, "badout", {})
    burst_worker(reg)
    [record] = dead(conn, "badout")
    assert record["reason"] == "invalid_result" and "not a JSON type" in record["error"]["message"]


@pytest.mark.parametrize("steps", [("a", "a"), ("",), (1,)])
def test_bad_step_declarations_are_refused(steps: tuple[Any, ...]) -> None:
    """Declared steps must be distinct, non-empty names."""
    with pytest.raises(HandlerRegistrationError):
        handler("x", registry=Registry(), steps=steps)
