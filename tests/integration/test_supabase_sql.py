"""deploy/supabase.sql runs on a Supabase-like database after `pgmq-worker migrate` and does what
it says: pgmq_worker exposed to the Data API roles, and the three roles with the grants of
docs/how-to/roles-and-grants.md."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from queues import enqueue, pgmq
from tests.integration.test_privileges import KINDS, held, readme_table
from tests.integration.test_supabase import as_user, supabase_db  # noqa: F401  (the fixture)

SUPABASE_SQL = Path(__file__).resolve().parent.parent.parent / "deploy" / "supabase.sql"
ROLE_NAMES = {"worker": "pgmq_worker_run", "web": "pgmq_worker_web", "sender": "pgmq_worker_send"}


@pytest.fixture
def service_role(server_url: str) -> None:
    """Supabase's service role (BYPASSRLS); cluster-wide and left in place, like the stand-in's."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN"
            " CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF; END $$"
        )


@pytest.fixture
def pasted(supabase_db: str, service_role: None) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: F811
    """The file with its role names made unique (roles are cluster-wide), run twice."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"{name}_{suffix}" for kind, name in ROLE_NAMES.items()}
    text = SUPABASE_SQL.read_text()
    for kind, name in ROLE_NAMES.items():
        text = text.replace(f"'{name}'", f"'{names[kind]}'")
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "sb_work")  # a queue made before the file ran
        try:
            conn.execute(text)
            conn.execute(text)  # pasted again: nothing fails, nothing doubles
            yield supabase_db, names
        finally:
            for name in names.values():
                if conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_the_file_is_plain_sql_for_the_editor() -> None:
    """No psql meta-commands (the SQL editor has none), and every role name is one we rename."""
    text = SUPABASE_SQL.read_text()
    assert re.search(r"^\s*\\", text, re.MULTILINE) is None
    for name in ROLE_NAMES.values():
        assert f"'{name}'" in text


def test_the_roles_hold_the_readme_grants_and_cannot_log_in_yet(pasted: tuple[str, dict[str, str]]) -> None:
    """Each role holds exactly its row set of the grants table, and is NOLOGIN until given a password."""
    url, names = pasted
    with psycopg.connect(url, autocommit=True) as conn:
        table = readme_table(conn)
        for kind in KINDS:
            assert held(conn, names[kind], "sb_work") == table[kind]
            login = conn.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (names[kind],)
            ).fetchone()
            assert login == (False,)


def test_the_data_api_roles_see_the_schema_and_rls_still_decides(pasted: tuple[str, dict[str, str]]) -> None:
    """anon, authenticated and service_role may use pgmq_worker; a user reads only their own job;
    the service role reads all, anon none."""
    url, _ = pasted
    alice = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        for role in ("anon", "authenticated", "service_role"):
            usage = conn.execute(
                "SELECT has_schema_privilege(%s, 'pgmq_worker', 'USAGE')", (role,)
            ).fetchone()
            assert usage == (True,)
        mine = enqueue(conn, "sb_work", {"n": 1}, owner=alice)
        enqueue(conn, "sb_work", {"n": 2}, owner=uuid.uuid4())
        assert as_user(conn, "authenticated", alice) == [(mine.job_id,)]
        assert len(as_user(conn, "service_role", None)) == 2
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_user(conn, "anon", None)


def test_before_migrate_the_file_stops_at_once(server_url: str) -> None:
    """Pasted into a database without our migrations: one clear error and no role made."""
    name = f"pgmqw_sb_bare_{uuid.uuid4().hex[:8]}"
    text = SUPABASE_SQL.read_text().replace("'pgmq_worker_run'", f"'{name}'")
    with psycopg.connect(server_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="run `pgmq-worker migrate` first"):
            conn.execute(text)
        exists: Any = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        assert exists == (0,)
