"""EXPLAIN (ANALYZE, BUFFERS) of the worker's read and settle statements, clean and under a held snapshot.

    python bench/explain.py --dsn postgresql://postgres@127.0.0.1:5432/postgres --out bench/explain/after.txt

A fresh database (dropped at the end); the no-op queue gets --dead jobs sent and drained by the
worker's own statements (worker/store/deliveries.py: read, ack_many), first with nothing holding
vacuum back (then VACUUM), then again with a REPEATABLE READ session holding a snapshot from before
the drain. Each time --batch more are sent and the next read (qty --batch), its ack_many and a
single-message settle (ack) are explained in a transaction that is rolled back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import pressure, throughput
from queues import pgmq
from worker.store import deliveries

try:
    from worker.store import settles
except ImportError:  # a checkout from before the settles had a module of their own (before/after runs)
    settles = deliveries  # type: ignore[assignment]

QUEUE = pressure.QUEUE
EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) "


async def drain(db_url: str, n: int, batch: int) -> None:
    """Send n and drain them the worker's way (read, then ack_many), in this process."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pressure.send(conn, QUEUE, n, "send_batch")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        marks = deliveries.ReadMarks() if hasattr(deliveries, "ReadMarks") else None
        while True:
            got = await deliveries.read(conn, QUEUE, 30, batch, **({"marks": marks} if marks else {}))
            if not got:
                return
            await settles.ack_many(conn, QUEUE, _done(got))


def _done(got: list[Any]) -> list[Any]:
    """ack_many's deliveries: (message, result) since the settle writes the row's times, else
    (msg_id, read_ct, result) as an older checkout takes them."""
    if "job_ids" in settles._ack_many_statement(QUEUE, True):
        return [(m, None) for m in got]
    return [(m.msg_id, m.read_ct, None) for m in got]


async def explain(db_url: str, batch: int) -> str:
    """The plans of one read, its ack_many and one single ack, rolled back."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pressure.send(conn, QUEUE, 2 * batch, "send_batch")  # one read explained, one to settle
    out: list[str] = []
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        read_sql = deliveries._render_read(QUEUE, job_rows=True, stamp=False)
        params: dict[str, Any] = {"queue": QUEUE, "vt": 30, "qty": batch, "ids": os.urandom(16 * batch)}
        if "%(low)s" in read_sql:  # the read that looks from the start (once a second), then a marked one
            params["low"] = 0
            out.append(await _plan(conn, "read from the start (low 0)", read_sql, params))
            cur = await conn.execute(f"SELECT min(msg_id) FROM pgmq.q_{QUEUE} WHERE read_ct = 0")
            low = (await cur.fetchone() or [0])[0]
            params["low"], params["qty"], params["ids"] = low, batch // 2, os.urandom(16 * batch)
            out.append(await _plan(conn, f"read from the mark (low {low})", read_sql, params))
        else:
            out.append(await _plan(conn, "read", read_sql, params))
        got = await deliveries.read(conn, QUEUE, 30, batch)
        ids, cts = [m.msg_id for m in got], [m.read_ct for m in got]
        ack_sql = settles._ack_many_statement(QUEUE, True)
        if hasattr(settles, "ack_many_params"):
            many = settles.ack_many_params(QUEUE, [(m, None) for m in got[1:]], job_rows=True)
        else:  # an older checkout: the ids and read counts as arrays, the results as one JSON array
            many = {
                "queue": QUEUE,
                "ids": ids[1:],
                "cts": cts[1:],
                "results": settles._json([None] * (len(ids) - 1)),
            }
        out.append(await _plan(conn, f"ack_many of {len(ids) - 1}", ack_sql, many))
        one = got[0]
        settle = settles.SETTLE.format(
            guarded=settles.ACK_DELETE.format(q=deliveries.table_ident(QUEUE)),
            then=psycopg.sql.SQL(""),
            also=psycopg.sql.SQL(""),
        ).as_string()
        single = {
            "queue": QUEUE,
            "msg_id": one.msg_id,
            "read_ct": one.read_ct,
            "status": "succeeded",
            "result": settles._json(None),
            "error": None,
            "deferral": False,
            "job_id": one.job_id,
            "enqueued_at": one.enqueued_at,
            "read_at": getattr(one, "read_at", None),
        }
        out.append(await _plan(conn, "settle (one ack)", settle, single))
        await conn.rollback()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await drain_rest(conn, batch)
    return "\n".join(out)


async def drain_rest(conn: psycopg.AsyncConnection[Any], batch: int) -> None:
    while got := await deliveries.read(conn, QUEUE, 30, batch):
        await settles.ack_many(conn, QUEUE, _done(got))


async def _plan(
    conn: psycopg.AsyncConnection[Any], label: str, statement: str, params: dict[str, Any]
) -> str:
    cur = await conn.execute(EXPLAIN + statement, params)
    lines = [r[0] for r in await cur.fetchall()]
    return f"-- {label}\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print (and with --out write) the plans."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or None)
    parser.add_argument(
        "--dead", type=int, default=30_000, help="jobs drained before the plans (default 30000)"
    )
    parser.add_argument("--batch", type=int, default=100, help="the read's qty (default 100)")
    parser.add_argument("--out", type=Path, help="also write the plans here")
    args = parser.parse_args(argv)
    server = throughput.choose_server(args.dsn)
    text: list[str] = []
    with throughput.fresh_database(server) as db_url:
        with psycopg.connect(db_url, autocommit=True) as conn:
            pgmq.ensure_queue(conn, QUEUE)
        asyncio.run(drain(db_url, args.dead, args.batch))
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"VACUUM (ANALYZE) pgmq.q_{QUEUE}")
            conn.execute("VACUUM (ANALYZE) pgmq_worker.jobs")
        text.append(
            f"==== clean: {args.dead:,} drained, then VACUUM\n" + asyncio.run(explain(db_url, args.batch))
        )
        with pressure.held_snapshot(db_url) as xmin:
            asyncio.run(drain(db_url, args.dead, args.batch))
            with psycopg.connect(db_url, autocommit=True) as conn:
                tables = pressure.sizes(conn, QUEUE)
            facts = ", ".join(f"{k} {pressure._mb(t.bytes)} dead {t.dead:,}" for k, t in tables.items())
            text.append(
                f"==== held: snapshot (xmin {xmin}) held while {args.dead:,} more drained ({facts})\n"
                + asyncio.run(explain(db_url, args.batch))
            )
    report = "\n".join(text)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
