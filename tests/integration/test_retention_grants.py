"""Retry, replay and prune through migration 0020's functions, as the least-privilege roles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from queues import enqueue, pgmq
from queues.names import dlq_name
from queues.retention import prune
from queues.retry import replay, retry
from tests.integration.test_privileges import as_role, refused, roles

__all__ = ["roles"]  # the fixture, used by name


def dead_job(admin: psycopg.Connection[Any], queue: str) -> Any:
    """A dead job of `queue` with its dead letter, as the worker leaves one."""
    for name in (queue, dlq_name(queue)):
        pgmq.ensure_queue(admin, name)
    sent = enqueue(admin, queue, {"n": 1})
    admin.execute(f"DELETE FROM pgmq.q_{queue}")
    admin.execute(
        "UPDATE pgmq_worker.jobs SET status = 'dead', finished_at = now() WHERE id = %s", (sent.job_id,)
    )
    pgmq.send(admin, dlq_name(queue), {"queue": queue, "msg_id": sent.msg_id, "payload": {"n": 1}})
    return sent.job_id


def test_the_web_role_retries_without_touching_dead_letters(db_url: str, roles: dict[str, str]) -> None:
    """The web role retries and replays dead letters; it may not delete one itself, nor prune."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        job_id = dead_job(admin, "priv_retry")
        other = dead_job(admin, "priv_replay")
    web = as_role(db_url, roles["web"])
    assert refused(web, "DELETE FROM pgmq.q_priv_retry_dlq")
    assert refused(web, "SELECT pgmq_worker.prune_jobs('priv_retry', now(), 10)")
    with psycopg.connect(web, autocommit=True) as conn:
        assert retry(conn, job_id).retried
        [replayed] = replay(conn, "priv_replay")
    assert replayed.job_id == other


def test_the_worker_role_prunes_and_the_sender_may_not(db_url: str, roles: dict[str, str]) -> None:
    """The worker role's pruner deletes old finished rows through the functions; the sender is refused."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        dead_job(admin, "priv_prune")
        admin.execute("UPDATE pgmq_worker.jobs SET finished_at = now() - interval '9 days'")
    assert refused(as_role(db_url, roles["sender"]), "SELECT * FROM pgmq_worker.retry_job(gen_random_uuid())")
    assert refused(as_role(db_url, roles["worker"]), "DELETE FROM pgmq_worker.jobs")
    with psycopg.connect(as_role(db_url, roles["worker"]), autocommit=True) as conn:
        pruned = {p.queue: p.jobs for p in prune(conn, timedelta(days=7))}
    assert pruned["priv_prune"] == 1
