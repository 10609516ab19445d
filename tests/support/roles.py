"""Login roles granted pgmq-worker access (`pgmq_worker.grant_access`), for least-privilege tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import conninfo, sql


def as_role(db_url: str, role: str) -> str:
    """The database's URL for logging in as `role` (the test servers trust local logins)."""
    params = conninfo.conninfo_to_dict(db_url)
    params["user"] = role
    params.pop("password", None)
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


@contextmanager
def login_roles(db_url: str, kinds: Sequence[str]) -> Iterator[dict[str, str]]:
    """One login role per kind (cluster-wide, so unique names), granted that kind; kind -> its URL."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"pgmqw_{kind}_{suffix}" for kind in kinds}
    with psycopg.connect(db_url, autocommit=True) as admin:
        for kind, name in names.items():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            admin.execute("SELECT pgmq_worker.grant_access(%s, %s)", (name, kind))
        try:
            yield {kind: as_role(db_url, name) for kind, name in names.items()}
        finally:
            for name in names.values():
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
