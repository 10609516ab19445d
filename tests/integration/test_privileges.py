"""Least privilege: a worker, a web process and a sender each do their job as a role with only
the grants `pgmq_worker.grant_access` gives (migration 0017), and are refused the rest.

None of the three is a superuser or owns a table; queues are created by the owner (the role that
migrated), before and after the grants, so both paths (grant_access on existing queues, the
trigger on pgmq.meta for new ones) are covered. The grants table of docs/how-to/roles-and-grants.md
is checked against what the database says each role holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from psycopg import conninfo, sql

from db.connect import Target, async_pool
from queues import enqueue, pgmq
from queues.artifacts import aget_artifact
from queues.catalog import Catalog
from queues.jobs import renew_watches, unwatch, unwatch_all, watch
from tests.support.helpers import dead, run_burst
from web import create_app
from worker import Backoff, Context, Limit, Registry, handler, schedule
from worker.cli import main
from worker.scheduler import Scheduler
from worker.store.job_steps import load_steps

FAST = Backoff(base=0.05, cap=0.1, jitter=0)
GRANTS_PAGE = Path(__file__).resolve().parent.parent.parent / "docs" / "how-to" / "roles-and-grants.md"
KINDS = ("worker", "web", "sender")
Refused = psycopg.errors.InsufficientPrivilege


@pytest.fixture
def roles(db_url: str) -> Iterator[dict[str, str]]:
    """Three login roles (cluster-wide, so unique names) granted worker, web and sender access."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"pgmqw_{kind}_{suffix}" for kind in KINDS}
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        pgmq.ensure_queue(admin, "priv_early")  # before the grants: grant_access covers it
        for kind, name in names.items():
            admin.execute("SELECT pgmq_worker.grant_access(%s, %s)", (name, kind))
        try:
            yield names
        finally:
            for name in names.values():
                # DROP OWNED takes the grants and policies in this database; the role goes last.
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(db_url: str, role: str) -> str:
    """The test database's URL for logging in as `role` (the test servers trust local logins)."""
    params = conninfo.conninfo_to_dict(db_url)
    params["user"] = role
    params.pop("password", None)
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


def refused(url: str, statement: str, params: Any = None) -> bool:
    """True when `statement` fails for lack of privilege (in its own transaction)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement, params)
        except Refused:
            return True
    return False


def test_no_role_is_a_superuser_or_owns_anything(db_url: str, roles: dict[str, str]) -> None:
    """The three roles hold grants, not ownership, and no attribute beyond LOGIN."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in roles.values():
            flags = admin.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = %s",
                (name,),
            ).fetchone()
            assert flags == (False, False, False, False)
            owned = admin.execute(
                "SELECT count(*) FROM pg_class"
                " WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)",
                (name,),
            ).fetchone()
            assert owned == (0,)


def worker_registry(seen: dict[str, Any]) -> Registry:
    """Handlers that use what a worker's role needs: progress, steps, artifacts, limits, hand-off,
    archive, retries, dead-letters and fan-out."""
    reg = Registry()

    @handler("priv_work", registry=reg, backoff=FAST, steps=("first", "second"))
    async def work(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        await ctx.progress(10, step="starting")
        first = await ctx.step("first", lambda: payload["n"] * 2)
        async with ctx.limit(Limit("priv_limit", concurrency=1, per_minute=600)):
            await ctx.artifact("out.txt", b"hello", "text/plain")
        second = await ctx.step("second", lambda: first + 1)
        ctx.enqueue("priv_next", {"from": payload["n"]})
        return {"n": second}

    @handler("priv_next", registry=reg, backoff=FAST, archive=True)
    async def next_(payload: dict[str, Any], ctx: Context) -> str:
        seen["next"] = payload
        return "archived"

    @handler("priv_fail", registry=reg, backoff=FAST, max_attempts=2)
    async def fail(payload: dict[str, Any], ctx: Context) -> None:
        raise RuntimeError(f"attempt {ctx.attempt} fails")

    @handler("priv_parent", registry=reg, backoff=FAST, steps=("children",))
    async def parent(payload: dict[str, Any], ctx: Context) -> str:
        batch = await ctx.fan_out("children", "priv_child", [{"n": 1}, {"n": 2}], max_running=1)
        return batch.summary

    @handler("priv_child", registry=reg, backoff=FAST)
    async def child(payload: dict[str, Any], ctx: Context) -> int:
        return int(payload["n"]) * 10

    return reg


def test_the_worker_role_runs_retries_dead_letters_and_fans_out(db_url: str, roles: dict[str, str]) -> None:
    """A burst worker as the worker role: every job ends where it should, messages gone or parked."""
    seen: dict[str, Any] = {}
    reg = worker_registry(seen)
    with psycopg.connect(db_url, autocommit=True) as admin:
        for task in reg:  # the owner creates queues (after the grants: the trigger covers them)
            pgmq.ensure_queue(admin, task.queue)
        work = enqueue(admin, "priv_work", {"n": 20})
        failing = enqueue(admin, "priv_fail", {})
        parent = enqueue(admin, "priv_parent", {})
    run_burst(Target(as_role(db_url, roles["worker"]), transaction_pooler=False), reg)
    with psycopg.connect(db_url, autocommit=True) as admin:
        status = dict(
            admin.execute(
                "SELECT queue, status FROM pgmq_worker.jobs WHERE id = ANY(%s)",
                ([work.job_id, failing.job_id, parent.job_id],),
            ).fetchall()
        )
        assert status == {"priv_work": "succeeded", "priv_fail": "dead", "priv_parent": "succeeded"}
        assert admin.execute(
            "SELECT result, progress FROM pgmq_worker.jobs WHERE id = %s", (work.job_id,)
        ).fetchone() == ({"n": 41}, 100)
        assert seen["next"] == {"from": 20}
        assert admin.execute("SELECT count(*) FROM pgmq.a_priv_next").fetchone() == (1,)
        assert admin.execute(
            "SELECT result FROM pgmq_worker.jobs WHERE id = %s", (parent.job_id,)
        ).fetchone() == ("2 of 2 succeeded",)
        letters = dead(admin, "priv_fail")
        assert [d["reason"] for d in letters] == ["max_attempts"]
        assert letters[0]["error"]["message"] == "attempt 2 fails"
        # The worker could add its wake-up trigger (TRIGGER privilege), so it listened.
        triggers = admin.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgmq_worker_notify_insert'"
            " AND tgrelid = 'pgmq.q_priv_work'::regclass"
        ).fetchone()
        assert triggers == (1,)


def test_the_worker_role_is_refused_what_only_the_owner_may_do(db_url: str, roles: dict[str, str]) -> None:
    """No roles, no DDL on our tables or pgmq's, no queue creation, no deleting job rows."""
    url = as_role(db_url, roles["worker"])
    assert refused(url, "CREATE ROLE pgmqw_never_made")
    assert refused(url, "ALTER TABLE pgmq_worker.jobs ADD COLUMN x int")
    assert refused(url, "DROP TABLE pgmq.q_priv_early")
    assert refused(url, "DELETE FROM pgmq_worker.jobs")
    assert refused(url, "SELECT pgmq.create('priv_by_worker')")
    assert refused(url, "SELECT pgmq_worker.grant_access(current_user, 'worker')")
    assert refused(url, "TRUNCATE pgmq.q_priv_early")


def test_the_web_role_enqueues_and_reads_status(db_url: str, roles: dict[str, str]) -> None:
    """POST /jobs and GET /jobs/{id} as the web role (queues made by the owner); SQL enqueue too."""
    catalog = Catalog()
    catalog.declare("priv_web")
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "priv_web")
    target = Target(as_role(db_url, roles["web"]), transaction_pooler=False)
    with TestClient(create_app(target, catalog=catalog)) as client:
        answer = client.post("/jobs/priv_web", json={"n": 1}, headers={"Idempotency-Key": "k-1"})
        assert answer.status_code == 202, answer.text
        again = client.post("/jobs/priv_web", json={"n": 1}, headers={"Idempotency-Key": "k-1"})
        assert again.json()["job_id"] == answer.json()["job_id"]
        status = client.get(f"/jobs/{answer.json()['job_id']}")
        assert status.status_code == 200, status.text
        assert status.json()["status"] == "queued"
        assert client.get("/healthz").status_code == 200
    with psycopg.connect(target.url, autocommit=True) as conn:
        assert enqueue(conn, "priv_early", {"n": 2}).created
    asyncio.run(stream_bookkeeping(target.url, uuid.UUID(answer.json()["job_id"])))


async def stream_bookkeeping(url: str, job_id: uuid.UUID) -> None:
    """What an event stream does besides LISTEN: register, renew and drop its watch; read steps
    and artifacts of the job it serves."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await watch(conn, job_id, "web-1", 30)
        await renew_watches(conn, "web-1", 30)
        assert await load_steps(conn, job_id) == {}
        assert await aget_artifact(conn, job_id, "out.txt") is None
        await unwatch(conn, job_id, "web-1")
        await unwatch_all(conn, "web-1")


def test_the_web_role_may_not_read_take_or_delete_messages(db_url: str, roles: dict[str, str]) -> None:
    """The web role sends, but reads no message, settles nothing and drops nothing."""
    url = as_role(db_url, roles["web"])
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.send(admin, "priv_early", {"secret": "payload"})
    assert refused(url, "SELECT message FROM pgmq.q_priv_early")
    assert refused(url, "SELECT * FROM pgmq.read('priv_early', 30, 1)")
    assert refused(url, "DELETE FROM pgmq.q_priv_early")
    assert refused(url, "SELECT pgmq.delete('priv_early', 1::bigint)")
    assert refused(url, "SELECT pgmq.purge_queue('priv_early')")
    assert refused(url, "DROP TABLE pgmq.q_priv_early")
    assert refused(url, "UPDATE pgmq_worker.jobs SET status = 'succeeded'")
    assert refused(url, "DELETE FROM pgmq_worker.jobs")
    assert refused(url, "SELECT * FROM pgmq.q_priv_early_dlq")


def test_the_sender_may_only_send(db_url: str, roles: dict[str, str]) -> None:
    """`select pgmq.send(...)` works (the message arrives); reading a queue or the jobs table does not."""
    url = as_role(db_url, roles["sender"])
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pgmq.send('priv_early', '{\"n\": 1}'::jsonb)").fetchone()
        delayed = conn.execute("SELECT pgmq.send('priv_early', '{\"n\": 2}'::jsonb, 5)").fetchone()
    assert row is not None
    assert delayed is not None
    with psycopg.connect(db_url, autocommit=True) as admin:
        bodies = admin.execute("SELECT message FROM pgmq.q_priv_early ORDER BY msg_id").fetchall()
    assert bodies == [({"n": 1},), ({"n": 2},)]
    assert refused(url, "SELECT message FROM pgmq.q_priv_early")
    assert refused(url, "SELECT * FROM pgmq.read('priv_early', 30, 1)")
    assert refused(url, "SELECT pgmq.delete('priv_early', 1::bigint)")
    assert refused(url, "SELECT * FROM pgmq_worker.jobs")
    assert refused(url, "SELECT pgmq.create('priv_by_sender')")
    assert refused(url, "SELECT pgmq.send('priv_early_dlq', '{}'::jsonb)")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT has_table_privilege('pgmq.meta', 'SELECT')").fetchone() == (False,)


def test_a_queue_created_later_gets_the_grants_at_its_commit(db_url: str, roles: dict[str, str]) -> None:
    """pgmq.create by the owner after grant_access: the sender can send to it at once."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pgmq.create('priv_late')")
    with psycopg.connect(as_role(db_url, roles["sender"]), autocommit=True) as conn:
        assert conn.execute("SELECT pgmq.send('priv_late', '{}'::jsonb)").fetchone() is not None


def test_grant_access_refuses_a_bad_kind_or_an_unknown_role(conn: psycopg.Connection[Any]) -> None:
    """A typo in the kind or the role name is an error, not a silent no-op."""
    with pytest.raises(psycopg.errors.RaiseException, match="kind must be"):
        conn.execute("SELECT pgmq_worker.grant_access(current_user, 'admin')")
    with pytest.raises(psycopg.errors.RaiseException, match="does not exist"):
        conn.execute("SELECT pgmq_worker.grant_access('pgmqw_nobody_at_all', 'worker')")


# --- the docs' grants table is what the database says ---------------------------------------


def held(admin: psycopg.Connection[Any], role: str, queue: str = "priv_early") -> set[tuple[str, str]]:
    """(object, privileges) the role holds; the objects of `queue` written as <queue>."""
    schemas = admin.execute(
        "SELECT 'schema ' || nspname, 'USAGE' FROM pg_namespace"
        " WHERE nspname IN ('pgmq', 'pgmq_worker') AND has_schema_privilege(%s, oid, 'USAGE')",
        (role,),
    ).fetchall()
    tables = admin.execute(
        """
        SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' ELSE '' END || n.nspname || '.' || c.relname,
               string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace, aclexplode(c.relacl) AS a
        WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
        GROUP BY 1
        """,
        (role,),
    ).fetchall()
    columns = admin.execute(
        """
        SELECT n.nspname || '.' || c.relname,
               string_agg(a.privilege_type || ' (' || at.attname || ')', ', ' ORDER BY a.privilege_type)
        FROM pg_attribute AS at JOIN pg_class AS c ON c.oid = at.attrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace, aclexplode(at.attacl) AS a
        WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
        GROUP BY 1
        """,
        (role,),
    ).fetchall()
    merged: dict[str, list[str]] = {}
    for obj, privileges in [*schemas, *tables, *columns]:  # a table's own grants, then its columns'
        merged.setdefault(str(obj).replace(queue, "<queue>"), []).append(str(privileges))
    return {(obj, ", ".join(parts)) for obj, parts in merged.items()}


def readme_table(conn: psycopg.Connection[Any]) -> dict[str, set[tuple[str, str]]]:
    """The rows of the docs' grants table that apply to `conn`'s database: kind -> {(object, privileges)}.

    pgmq_worker.pgmq_sql_install exists only where pgmq was installed from SQL, not as the extension.
    """
    sql_install = conn.execute("SELECT to_regclass('pgmq_worker.pgmq_sql_install')").fetchone() != (None,)
    text = GRANTS_PAGE.read_text()
    block = text.split("<!-- grants-table:begin -->")[1].split("<!-- grants-table:end -->")[0]
    table: dict[str, set[tuple[str, str]]] = {kind: set() for kind in KINDS}
    for line in block.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in KINDS and (sql_install or "pgmq_sql_install" not in cells[1]):
            table[cells[0]].add((cells[1], cells[2]))
    return table


def test_the_readme_lists_exactly_the_grants_each_role_holds(db_url: str, roles: dict[str, str]) -> None:
    """Every privilege grant_access gives appears in the docs' grants table, and nothing else."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        actual = {kind: held(admin, name) for kind, name in roles.items()}
        expected = readme_table(admin)
    assert actual == expected


def test_the_worker_role_runs_from_the_cli(db_url: str, roles: dict[str, str]) -> None:
    """`pgmq-worker queues` and a burst run of the reference handlers' queues work as the worker."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "text_stats")
        enqueue(admin, "text_stats", {"text": "to be or not to be"})
    env = {"DATABASE_URL": as_role(db_url, roles["worker"]), "PGMQ_WORKER_POLL_INTERVAL": "0.1"}
    ran = CliRunner().invoke(main, ["run", "--burst", "--queue", "text_stats"], env=env)
    assert ran.exit_code == 0, ran.output
    with psycopg.connect(db_url, autocommit=True) as admin:
        assert admin.execute("SELECT status FROM pgmq_worker.jobs WHERE queue = 'text_stats'").fetchone() == (
            "succeeded",
        )


def test_the_worker_role_sends_schedule_ticks_and_the_web_role_reads_them(
    db_url: str, roles: dict[str, str]
) -> None:
    """A scheduler pass as the worker role claims a tick and sends it; the web role may only read ticks."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "priv_sched")
        admin.execute(
            "INSERT INTO pgmq_worker.schedule_ticks (schedule, tick, queue)"
            " VALUES ('priv', %s, 'priv_sched')",
            (datetime(2026, 1, 1, tzinfo=UTC),),
        )
    hourly = schedule("priv_sched", "0 * * * *", name="priv")

    async def one_pass() -> None:
        pool = async_pool(
            Target(as_role(db_url, roles["worker"]), transaction_pooler=False), min_size=1, max_size=1
        )
        await pool.open()
        try:
            now = datetime(2026, 1, 1, 1, 0, 1, tzinfo=UTC)
            await Scheduler(pool, [hourly], lambda _q: True, reconnect_max_s=1, clock=lambda: now).tick_all()
        finally:
            await pool.close()

    asyncio.run(one_pass())
    with psycopg.connect(db_url, autocommit=True) as admin:
        sent = admin.execute(
            "SELECT tick, msg_id FROM pgmq_worker.schedule_ticks WHERE schedule = 'priv' ORDER BY tick"
        )
        assert [r[0] for r in sent.fetchall()][-1] == datetime(2026, 1, 1, 1, tzinfo=UTC)
    web = as_role(db_url, roles["web"])
    with psycopg.connect(web, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pgmq_worker.schedule_ticks").fetchone() == (2,)
    assert refused(web, "DELETE FROM pgmq_worker.schedule_ticks")
    assert refused(as_role(db_url, roles["sender"]), "SELECT * FROM pgmq_worker.schedule_ticks")
