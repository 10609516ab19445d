"""The `pgmq-worker` command line: happy paths and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import gc
import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from db.pgmq_install import detect
from queues import pgmq
from tests.support.helpers import dead, rows
from worker.cli import main

UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2"


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        list(args),
        env={"DATABASE_URL": url, "PGMQ_WORKER_POLL_INTERVAL": "0.1", "PGMQ_WORKER_LOG_LEVEL": "warning"},
        catch_exceptions=False,
    )


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def test_send_then_run_burst_processes_the_reference_handler(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`send` validates against the registered handler's model; `run --burst` processes and exits 0."""
    sent = cli(db_url, "send", "text_stats", '{"text": "to be or not to be"}')
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.stdout.strip().splitlines()[-1])["queue"] == "text_stats"
    listed = cli(db_url, "queues", "--json")
    [stats] = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert stats == {
        "queue": "text_stats",
        "depth": 1,
        "visible": 1,
        "in_flight": 0,
        "oldest_age_s": stats["oldest_age_s"],
        "dead": 0,
        "paused": False,
    }
    ran = cli(db_url, "run", "--burst", "--concurrency", "2")
    assert ran.exit_code == 0, ran.output
    assert rows(conn, "text_stats") == []
    assert dead(conn, "text_stats") == []


def test_queues_shows_depth_in_flight_and_dead_letters(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """The table has a row per queue (not per _dlq) with its counts."""
    pgmq.ensure_queue(conn, "alpha")
    for _ in range(3):
        pgmq.send(conn, "alpha", {})
    conn.execute("SELECT * FROM pgmq.read('alpha', 60, 1)")
    pgmq.send(conn, "alpha_dlq", {"reason": "x"})
    result = cli(db_url, "queues")
    assert result.exit_code == 0, result.output
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("alpha")]
    name, depth, in_flight, _oldest, dead_count, state = line.split()
    assert (name, depth, in_flight, dead_count, state) == ("alpha", "3", "1", "1", "-")


@pytest.mark.parametrize("reported", [True, False], ids=["pgmq reports visible", "counted by us"])
def test_queue_metrics_count_visible_in_flight_and_dead(
    conn: psycopg.Connection[Any], reported: bool
) -> None:
    """Where pgmq.metrics() lacks queue_visible_length (1.4) the visible count is ours, and the same."""
    features = detect(conn)
    if reported and not features.metrics_visible:
        pytest.skip(f"pgmq {features.version}'s metrics() lacks queue_visible_length (1.5+ has it)")
    pgmq.ensure_queue(conn, "counted")
    pgmq.send_batch(conn, "counted", [{}, {}, {}])
    pgmq.send(conn, "counted", {}, delay_s=60)
    conn.execute("SELECT * FROM pgmq.read('counted', 60, 1)")
    pgmq.send_batch(conn, "counted_dlq", [{}, {}])
    m = pgmq.metrics(conn, "counted", dataclasses.replace(features, metrics_visible=reported))
    assert (m.depth, m.visible, m.in_flight, m.dead) == (4, 2, 2, 2)
    assert m.oldest_age_s is not None


def test_detection_sees_whether_metrics_reports_visible_messages(conn: psycopg.Connection[Any]) -> None:
    """PgmqFeatures.metrics_visible says what pgmq.metrics() returns, whatever the version."""
    pgmq.ensure_queue(conn, "described")
    cur = conn.execute("SELECT * FROM pgmq.metrics('described')")
    columns = [c.name for c in cur.description or []]
    assert detect(conn).metrics_visible is ("queue_visible_length" in columns)


def test_migrate_is_idempotent_and_shows_status(db_url: str) -> None:
    """`migrate` on a migrated database says up to date; `--status` lists applied migrations."""
    first = cli(db_url, "migrate")
    assert first.exit_code == 0, first.output
    assert "up to date" in first.stdout
    assert "pgmq " in first.stdout
    status = cli(db_url, "migrate", "--status")
    assert status.exit_code == 0
    assert status.stdout.startswith("0001_worker_schema  ")
    assert "pending" not in status.stdout


def test_dead_letters_can_be_listed_and_replayed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """`dlq list` shows the parked record; `dlq replay` sends its payload back and empties the DLQ."""
    cli(db_url, "send", "text_stats", '{"text": "x"}')
    conn.execute("UPDATE pgmq.q_text_stats SET message = '{\"text\": 42}'")  # poison it
    assert cli(db_url, "run", "--burst").exit_code == 0
    listed = cli(db_url, "dlq", "list", "text_stats")
    [entry] = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert entry["reason"] == "invalid_payload"
    assert entry["payload"] == {"text": 42}
    conn.execute(
        "UPDATE pgmq.q_text_stats_dlq SET message = jsonb_set(message, '{payload,text}', '\"fixed\"')"
    )
    replayed = cli(db_url, "dlq", "replay", "text_stats", "--msg-id", str(entry["dlq_msg_id"]))
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout.strip().splitlines()[-1])["replayed"] == 1
    assert dead(conn, "text_stats") == []
    assert [r["message"] for r in rows(conn, "text_stats")] == [{"text": "fixed"}]
    assert cli(db_url, "run", "--burst").exit_code == 0
    assert rows(conn, "text_stats") == []


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("send", "text_stats", "{not json"), ("not valid JSON",)),
        (("send", "text_stats", "[1, 2]"), ("JSON object",)),
        (("send", "text_stats", '{"text": 5}'), ("text: Input should be a valid string",)),
        (("send", "Bad-Name", "{}"), ("lowercase letters",)),
        (("send", "nobody_handles", "{}"), ("no queue named 'nobody_handles'",)),
        (("run", "--import", "no_such_module_here"), ("cannot import handler module 'no_such_module_here'",)),
        (("run", "--queue", "unhandled"), ("no handler is registered for queue 'unhandled'",)),
        (("dlq", "list", "ghost"), ("has no dead-letter queue",)),
    ],
)
def test_bad_input_gives_a_one_line_error(
    db_url: str, conn: psycopg.Connection[Any], args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    """Each bad argument exits 1 with one `Error:` line, and writes nothing."""
    result = cli(db_url, *args)
    assert_one_line_error(result, *fragments)
    assert "text_stats" not in pgmq.list_queues(conn) or rows(conn, "text_stats") == []


def test_an_unreachable_database_is_a_one_line_error() -> None:
    """No traceback and no password when the database cannot be reached."""
    result = cli(UNREACHABLE, "queues")
    assert_one_line_error(result, "cannot reach", "127.0.0.1:1/nowhere")
    assert "secret" not in result.output


def test_a_database_without_pgmq_asks_for_migrate(server_url: str) -> None:
    """Pointing `run` at a database where pgmq is missing says to run `pgmq-worker migrate`."""
    result = cli(server_url, "run", "--burst")  # the admin database: never migrated
    assert_one_line_error(result, "pgmq-worker migrate")


def test_bad_flag_values_are_usage_errors(db_url: str) -> None:
    """click rejects out-of-range options with exit status 2."""
    result = cli(db_url, "run", "--concurrency", "0")
    assert result.exit_code == 2
    assert "concurrency" in result.output
    result = cli(db_url, "run", "--threads", "0")
    assert result.exit_code == 2
    assert "--threads" in result.output


def test_replay_needs_ids_or_all(db_url: str) -> None:
    """`dlq replay` without --msg-id or --all is a usage error."""
    result = cli(db_url, "dlq", "replay", "text_stats")
    assert result.exit_code == 2
    assert "--all" in result.output


def test_a_bad_setting_is_a_one_line_error(db_url: str) -> None:
    """A malformed PGMQ_WORKER_* variable names the setting."""
    result = CliRunner().invoke(
        main, ["run", "--burst"], env={"DATABASE_URL": db_url, "PGMQ_WORKER_CONCURRENCY": "lots"}
    )
    assert_one_line_error(result, "invalid setting", "concurrency")
    result = CliRunner().invoke(
        main, ["run", "--burst"], env={"DATABASE_URL": db_url, "PGMQ_WORKER_THREADS": "0"}
    )
    assert_one_line_error(result, "invalid setting", "threads")
    result = CliRunner().invoke(
        main, ["run", "--burst"], env={"DATABASE_URL": db_url, "PGMQ_WORKER_EVENT_LOOP": "trio"}
    )
    assert_one_line_error(result, "invalid setting", "event_loop")


def test_send_to_a_queue_without_job_rows_sends_the_message_alone(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """`send` to a queue whose handler runs with job_rows=False prints no job; `run` drains it."""
    handlers = ("--import", "bench.noop_handlers")
    sent = cli(db_url, "send", *handlers, "bench_noop_no_job_rows", '{"i": 1}')
    assert sent.exit_code == 0, sent.output
    printed = json.loads(sent.stdout.strip().splitlines()[-1])
    assert (printed["queue"], printed["job_id"]) == ("bench_noop_no_job_rows", None)
    ran = cli(db_url, "run", *handlers, "--queue", "bench_noop_no_job_rows", "--burst")
    assert ran.exit_code == 0, ran.output
    assert rows(conn, "bench_noop_no_job_rows") == []
    assert conn.execute("SELECT count(*) FROM pgmq_worker.jobs").fetchone() == (0,)


def test_run_freezes_what_start_up_made(db_url: str) -> None:
    """`run` moves start-up's objects out of the collector's sight (gc.freeze) before working."""
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        assert cli(db_url, "run", "--burst").exit_code == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process is not a worker
