"""The Supabase migration: job rows published to Realtime, and readable only by their owner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from db.migrate import migrate
from queues import enqueue, pgmq
from tests.conftest import install_pgmq_under_test, with_dbname

# What Supabase has before any migration of ours runs: the API roles, auth.uid() reading the
# request's JWT subject, and the Realtime publication. Roles are cluster-wide, hence IF NOT EXISTS.
SUPABASE_STAND_IN = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN;
    END IF;
END $$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
    $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT USAGE ON SCHEMA auth TO authenticated, anon;
CREATE PUBLICATION supabase_realtime;
CREATE SCHEMA realtime;
CREATE TABLE realtime.messages (
    id bigint GENERATED ALWAYS AS IDENTITY, topic text, extension text, payload jsonb, event text,
    private boolean, inserted_at timestamptz DEFAULT now()
);
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
GRANT USAGE ON SCHEMA realtime TO authenticated, anon;
GRANT SELECT ON realtime.messages TO authenticated;
CREATE FUNCTION realtime.topic() RETURNS text LANGUAGE sql STABLE AS
    $$ SELECT current_setting('realtime.topic', true) $$;
CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('test.realtime_down', true) = 'on' THEN
        RAISE EXCEPTION 'realtime is down';
    END IF;
    INSERT INTO realtime.messages (topic, extension, payload, event, private)
    VALUES (topic, 'broadcast', payload, event, private);
END $$;
"""


@pytest.fixture
def supabase_db(server_url: str) -> Iterator[str]:
    """A fresh database that looks like Supabase's, then pgmq and our migrations."""
    name = f"pgmqw_sb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(server_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SUPABASE_STAND_IN)
            install_pgmq_under_test(conn)
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def as_user(conn: psycopg.Connection[Any], role: str, sub: uuid.UUID | None) -> list[tuple[Any, ...]]:
    """The job ids visible to a request by `role` with JWT subject `sub`, as PostgREST would run it."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(sub) if sub else "",))
        return conn.execute("SELECT id FROM pgmq_worker.jobs ORDER BY created_at").fetchall()


def test_each_user_reads_only_their_own_jobs(supabase_db: str) -> None:
    """Two users see their own job each; a user with none sees nothing; writes are refused."""
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        a = enqueue(conn, "work", {"n": 1}, owner=alice)
        b = enqueue(conn, "work", {"n": 2}, owner=bob)
        enqueue(conn, "work", {"n": 3})  # no owner: a server-side job
        assert as_user(conn, "authenticated", alice) == [(a.job_id,)]
        assert as_user(conn, "authenticated", bob) == [(b.job_id,)]
        assert as_user(conn, "authenticated", carol) == []
        assert as_user(conn, "authenticated", None) == []

        def write_as_alice() -> None:
            with conn.transaction():
                conn.execute("SET LOCAL ROLE authenticated")
                conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(alice),))
                conn.execute("UPDATE pgmq_worker.jobs SET status = 'succeeded'")

        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            write_as_alice()


def test_an_anonymous_caller_reads_nothing(supabase_db: str) -> None:
    """The anon role has no access to job rows at all."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        enqueue(conn, "work", {"n": 1}, owner=uuid.uuid4())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_user(conn, "anon", None)


def test_job_rows_are_published_to_supabase_realtime(supabase_db: str) -> None:
    """The jobs table is in the supabase_realtime publication, so postgres_changes streams it."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        published = conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
        ).fetchall()
    assert published == [("pgmq_worker", "jobs")]


def test_without_supabase_the_migration_adds_no_policy_and_rls_still_guards(
    conn: psycopg.Connection[Any],
) -> None:
    """On plain Postgres: RLS on, no policy, so only the owner (and BYPASSRLS roles) see rows."""
    enabled = conn.execute(
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'pgmq_worker.jobs'::regclass"
    ).fetchone()
    policies = conn.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'jobs'").fetchone()
    assert enabled == (True,)
    assert policies == (0,)


def broadcasts(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT event, payload->>'status', private FROM realtime.messages WHERE topic = %s ORDER BY id",
        (f"job:{job_id}",),
    ).fetchall()


def test_every_job_change_is_broadcast_to_its_private_topic(supabase_db: str) -> None:
    """Enqueue and each status change go to `job:<id>` as private broadcasts."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        sent = enqueue(conn, "work", {"n": 1}, owner=uuid.uuid4())
        conn.execute("UPDATE pgmq_worker.jobs SET status = 'running' WHERE id = %s", (sent.job_id,))
        assert broadcasts(conn, sent.job_id) == [("insert", "queued", True), ("update", "running", True)]


def test_a_user_receives_only_their_own_job_topics(supabase_db: str) -> None:
    """The realtime.messages policy lets the owner read `job:<id>` and no one else."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        sent = enqueue(conn, "work", {"n": 1}, owner=alice)

        def visible_to(user: uuid.UUID) -> int:
            with conn.transaction():
                conn.execute("SET LOCAL ROLE authenticated")
                conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(user),))
                conn.execute("SELECT set_config('realtime.topic', %s, true)", (f"job:{sent.job_id}",))
                row = conn.execute("SELECT count(*) FROM realtime.messages").fetchone()
                return int(row[0]) if row else -1

        assert visible_to(alice) == 1
        assert visible_to(bob) == 0


def test_a_failing_broadcast_never_fails_the_write(supabase_db: str) -> None:
    """If realtime.send raises, the job row is still written (with a warning), nothing rolls back."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        conn.execute("SET test.realtime_down = 'on'")
        sent = enqueue(conn, "work", {"n": 1})
        assert broadcasts(conn, sent.job_id) == []
        row = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE id = %s", (sent.job_id,)).fetchone()
        assert row == ("queued",)


def test_a_user_cannot_read_another_jobs_topic_while_joined_to_their_own(supabase_db: str) -> None:
    """Joined to `job:<her job>`, Alice reads that topic's broadcasts only: Bob's job's rows stay
    hidden (the policy compares each row's topic with realtime.topic(), migration 0016)."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "work")
        hers = enqueue(conn, "work", {"n": 1}, owner=alice)
        his = enqueue(conn, "work", {"n": 2}, owner=bob)
        conn.execute("UPDATE pgmq_worker.jobs SET status = 'running' WHERE id = %s", (his.job_id,))
        with conn.transaction():
            conn.execute("SET LOCAL ROLE authenticated")
            conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(alice),))
            conn.execute("SELECT set_config('realtime.topic', %s, true)", (f"job:{hers.job_id}",))
            topics = conn.execute("SELECT DISTINCT topic FROM realtime.messages").fetchall()
    assert topics == [(f"job:{hers.job_id}",)]
