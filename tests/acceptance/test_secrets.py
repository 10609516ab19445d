"""Secrets never reach a log line, an error message, the CLI's output or a dead-letter record.

Each test makes a run fail on purpose (a malformed DATABASE_URL, a wrong password, a closed port,
a provider answering 401 with the key it refused) with secrets set in the environment, captures
everything the process printed and what it stored, and looks for every secret in it.
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import jwt
import psycopg
import pytest
import structlog
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg import conninfo, sql

from db.connect import Target, resolve
from db.errors import DatabaseUnavailable
from db.logs import configure_logging, get_logger
from db.redact import MASK, Redactor, environment_secrets, mask_url, redact, url_secrets
from db.settings import DatabaseSettings
from queues import pgmq
from queues.catalog import Catalog
from queues.enqueue import enqueue
from tests.support.helpers import captured, dead
from tests.support.processes import REPO, spawned, worker_process
from tests.support.standins import serving
from web import create_app
from web.__main__ import main as web_main
from web.settings import WebSettings
from worker.cli import main

PASSWORD = "S3cr3t%Passw0rd!"
JWT_SECRET = "jwt-secret-0123456789-abcdef-0123456789"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LTAxMjM0NTY3ODlhYmM="  # 32 bytes: a valid one
LLM_KEY = "sk-llm-key-0123456789abcdef"
IMAGE_KEY = "sk-image-key-0123456789abcdef"
SECRET_ENV = {
    "PGMQ_WORKER_JWT_SECRET": JWT_SECRET,
    "PGMQ_WORKER_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "PGMQ_WORKER_LLM_API_KEY": LLM_KEY,
    "PGMQ_WORKER_IMAGE_API_KEY": IMAGE_KEY,
    "PGMQ_WORKER_LOG_FORMAT": "json",
    "PGMQ_WORKER_CONNECT_TIMEOUT": "3",
}
WORKER_ENV = {k: v for k, v in SECRET_ENV.items() if k != "PGMQ_WORKER_LOG_FORMAT"}  # worker_process sets it
SECRETS = (PASSWORD, "Passw0rd", JWT_SECRET, WEBHOOK_SECRET, LLM_KEY, IMAGE_KEY)


def assert_no_secret(text: str, secrets: tuple[str, ...] = SECRETS) -> None:
    """None of the secrets (nor their percent-decoded forms) appear in `text`."""
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked: {text}"


def cli(database_url: str, *args: str) -> str:
    """Run the CLI in-process with the secrets set; everything it printed (stdout and stderr)."""
    result = CliRunner().invoke(main, list(args), env={"DATABASE_URL": database_url, **SECRET_ENV})
    assert result.exit_code != 0, result.output
    return result.output + "".join(map(str, [result.exception or ""]))


# --- malformed URLs: libpq quotes the bad part, which is the password -----------------------


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        # a "%" that is no percent-escape: libpq answers `invalid percent-encoded token: "<password>"`
        (f"postgresql://app:{PASSWORD}@127.0.0.1:1/db", "not a valid Postgres URL"),
        # an unescaped "@": libpq takes "Passw0rd!@127.0.0.1" for the host and prints it
        ("postgresql://app:S3cr3t@Passw0rd!@127.0.0.1:1/db", "percent-encode them"),
        # an unclosed IPv6 bracket: libpq echoes the whole URL
        (f"postgresql://app:{PASSWORD.replace('%', '')}@[::1/db", "not a valid Postgres URL"),
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["queues"], ["send", "q", "{}"], ["run", "--burst"]])
def test_a_malformed_database_url_is_reported_without_its_password(
    url: str, expect: str, command: list[str]
) -> None:
    """Every command's one-line error names the problem and masks the password."""
    output = cli(url, *command)
    assert expect in output, output
    assert "Traceback" not in output
    assert_no_secret(output, (*SECRETS, "S3cr3tPassw0rd!"))


@pytest.mark.parametrize(
    "url",
    [f"postgresql://app:{PASSWORD}@127.0.0.1:1/db", f"postgresql://app:{PASSWORD[:6]}@x@127.0.0.1:1/db"],
)
def test_the_web_process_reports_a_bad_url_without_its_password(url: str) -> None:
    """`python -m web` (what `pgmq-worker web` runs) fails at start with the password masked."""
    result = CliRunner().invoke(web_main, [], env={"DATABASE_URL": url, **SECRET_ENV})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: DATABASE_URL"), result.output
    assert_no_secret(result.output, (*SECRETS, PASSWORD[:6]))


@settings(max_examples=300, deadline=None)
@given(tail=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")))
def test_no_password_survives_resolving_any_url(tail: str) -> None:
    """Whatever a password holds, resolve() either works or fails without it; describe() masks it."""
    password = "Pw-" + tail
    url = f"postgresql://app:{password}@db.example.com:5432/app"
    try:
        message = resolve(DatabaseSettings(DATABASE_URL=url)).describe()
    except DatabaseUnavailable as exc:
        message, cause = str(exc), exc.__cause__
    else:
        cause = None
    assert cause is None  # a cause would carry libpq's own message into tracebacks
    assert password not in message
    assert "Pw-" not in message


@given(password=st.text(st.characters(blacklist_categories=["Cs"]), min_size=4))
@example(password="00@?")  # an "@" then a "?": the head before the "?" looked like a whole URL
@example(password="0@a?k=v")
def test_mask_url_hides_any_password(password: str) -> None:
    """mask_url keeps the rest of the URL and drops the password, even one with "@" or "/" in it."""
    masked = mask_url(f"postgresql://app:{password}@db.example.com/app")
    assert masked == f"postgresql://app:{MASK}@db.example.com/app"
    assert password in url_secrets(f"postgresql://app:{password}@db.example.com/app")


def test_an_at_sign_in_the_query_is_not_taken_for_the_password() -> None:
    """`application_name=me@laptop` is a query's "@": the URL is accepted, its password masked."""
    url = "postgresql://app:pw-1234@db.example.com/app?application_name=me@laptop"
    # Both readings are secrets (the other one, up to the query's "@", costs masking a little more).
    assert resolve(DatabaseSettings(DATABASE_URL=url)).secrets()[0] == "pw-1234"
    assert mask_url(url) == "postgresql://app:***@db.example.com/app?application_name=me@laptop"
    assert url_secrets("postgresql://app:pa?ss-word@db/app") == ("pa?ss-word", "ss-word")


def test_database_settings_do_not_show_the_url() -> None:
    """A settings object or a Target in a log line or a traceback (its repr) leaves the URL out."""
    settings = DatabaseSettings(DATABASE_URL=f"postgresql://app:{PASSWORD.replace('%', '%25')}@db/app")
    assert_no_secret(repr(settings))
    assert_no_secret(str(settings))
    assert_no_secret(repr(resolve(settings)))  # the Target too


def test_key_value_conninfo_and_pgpassword_are_secrets_too() -> None:
    """`password=` in a conninfo string or URL query, PGPASSWORD and *_SECRET/*_API_KEY values."""
    env = {
        "DATABASE_URL": "host=db user=app password='pa ss word' dbname=app",
        "PGPASSWORD": "pgpass-1234",
        "PGMQ_WORKER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SOME_API_KEY": "k-123456",
        "PGMQ_WORKER_LOG_LEVEL": "debug",
    }
    assert set(environment_secrets(env)) >= {"pa ss word", "pgpass-1234", WEBHOOK_SECRET, "k-123456"}
    assert "debug" not in environment_secrets(env)
    assert (
        mask_url("postgresql://db/app?user=app&password=hunter22")
        == "postgresql://db/app?user=app&password=***"
    )
    assert (
        redact("failed for hunter22", url_secrets("postgresql://db/app?password=hunter22"))
        == "failed for ***"
    )


def test_a_secret_is_masked_percent_encoded_too() -> None:
    """A key sent as a URL parameter is escaped in the URL an HTTP error names: masked in that form too."""
    url = f"https://api.example.com/v1?key={quote(WEBHOOK_SECRET, safe='')}&q={quote_plus('pa ss+word')}"
    assert redact(url, [WEBHOOK_SECRET, "pa ss+word"]) == f"https://api.example.com/v1?key={MASK}&q={MASK}"
    assert Redactor(structlog.processors.JSONRenderer(), [WEBHOOK_SECRET])(None, "info", {"url": url}) == (
        f'{{"url": "https://api.example.com/v1?key={MASK}&q=pa+ss%2Bword"}}'
    )


# --- connection failures ---------------------------------------------------------------------


@pytest.fixture
def password_role(server_url: str) -> Iterator[tuple[str, str]]:
    """A login role with PASSWORD whose logins the server checks by password; (role, host:port).

    The test servers trust local connections, so a wrong password would be let in: pg_hba lines
    for this role alone ask for scram-sha-256. The file may be a shared server's: it is edited
    under a lock, and only our lines are taken out again.
    """
    role = f"pgmqw_pw_{uuid.uuid4().hex[:10]}"
    params = conninfo.conninfo_to_dict(server_url)
    host = str(params.get("host") or "localhost")
    with psycopg.connect(server_url, autocommit=True) as admin:
        hba = Path(str(admin.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        port = str(admin.execute("SHOW port").fetchone()[0])  # type: ignore[index]
        ours = [f"{kind} all {role} {where} scram-sha-256" for kind, where in HBA_LINES]
        try:
            edit_hba(hba, lambda lines: [*ours, *lines])
        except OSError as exc:
            pytest.skip(f"cannot make the server check passwords ({hba}: {exc})")
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), PASSWORD))
        admin.execute("SELECT pg_reload_conf()")
        try:
            yield role, f"{host}:{port}" if not host.startswith("/") else f"?host={host}&port={port}"
        finally:
            edit_hba(hba, lambda lines: [line for line in lines if line not in ours])
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


HBA_LINES = (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))


def edit_hba(hba: Path, change: Callable[[list[str]], list[str]]) -> None:
    """Rewrite pg_hba.conf under an exclusive lock (another test session may edit it too)."""
    with hba.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().splitlines()
        f.seek(0)
        f.write("\n".join(change(lines)) + "\n")
        f.truncate()


def url_of(role: str, password: str, where: str, dbname: str) -> str:
    """A URL for `role` at `where` (host:port, or a socket's ?host=...&port=...)."""
    if where.startswith("?"):
        return f"postgresql://{role}:{password}@/{dbname}{where}"
    return f"postgresql://{role}:{password}@{where}/{dbname}"


def test_a_wrong_password_is_refused_without_printing_either(password_role: tuple[str, str]) -> None:
    """The server refuses a wrong password; the one-line error masks the one we sent."""
    role, where = password_role
    wrong = PASSWORD.replace("%", "%25") + "-wrong"
    output = cli(url_of(role, wrong, where, "postgres"), "migrate")
    assert "password authentication failed" in output, output
    assert_no_secret(output, (*SECRETS, "S3cr3t%25Passw0rd!-wrong"))


def test_a_worker_with_a_password_never_logs_it(password_role: tuple[str, str], db_url: str) -> None:
    """`run --burst` as a password role with worker grants: it runs a job and logs where it runs
    (worker.started's `database`), never the password; nor does a role without grants that fails."""
    role, where = password_role
    dbname = conninfo.conninfo_to_dict(db_url)["dbname"]
    url = url_of(role, PASSWORD.replace("%", "%25"), where, str(dbname))
    argv, env = worker_process(url, "handlers", **WORKER_ENV)
    argv += ["--burst", "--queue", "text_stats"]
    refused = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=60, check=False)
    output = refused.stdout.decode() + refused.stderr.decode()
    assert refused.returncode == 1, output  # logged in, but may not read pgmq_worker's tables yet
    assert_no_secret(output)
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "text_stats")
        pgmq.send(admin, "text_stats", {"text": "to be or not to be"})
        admin.execute("SELECT pgmq_worker.grant_access(%s, 'worker')", (role,))
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=60, check=False)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    started = [json.loads(line) for line in output.splitlines() if '"worker.started"' in line]
    assert started, output
    assert started[0]["database"].startswith(f"{role}@"), started
    assert '"job.succeeded"' in output
    assert_no_secret(output)


CUT_CONNECTIONS = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"


def test_a_worker_losing_its_database_logs_why_without_the_password(
    password_role: tuple[str, str], db_url: str, tmp_path: Path
) -> None:
    """Its connections cut again and again: worker.database_unavailable and the listener's
    reconnects say what failed, never with the password; the worker stops cleanly after."""
    role, where = password_role
    url = url_of(role, PASSWORD.replace("%", "%25"), where, str(conninfo.conninfo_to_dict(db_url)["dbname"]))
    with psycopg.connect(db_url, autocommit=True) as admin:
        pgmq.ensure_queue(admin, "text_stats")
        admin.execute("SELECT pgmq_worker.grant_access(%s, 'worker')", (role,))
    argv, env = worker_process(url, "handlers", **WORKER_ENV, PGMQ_WORKER_RECONNECT_MAX="0.3")
    log = tmp_path / "worker.log"
    with spawned([*argv, "--queue", "text_stats"], env, log) as proc, psycopg.connect(db_url) as admin:
        admin.autocommit = True
        deadline = time.monotonic() + 30
        while "worker.started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        while "worker.database_unavailable" not in log.read_text() and time.monotonic() < deadline:
            admin.execute(CUT_CONNECTIONS, (role,))
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    output = log.read_text()
    assert "worker.database_unavailable" in output, output
    assert_no_secret(output)


def test_an_unreachable_server_is_reported_without_the_password() -> None:
    """A closed port: the error says where (masked), never the password."""
    output = cli(f"postgresql://app:{PASSWORD.replace('%', '%25')}@127.0.0.1:1/db", "migrate")
    assert "cannot reach app@127.0.0.1:1/db" in output, output
    assert_no_secret(output, (*SECRETS, "S3cr3t%25Passw0rd!"))


def test_log_events_are_scrubbed_of_the_environments_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """The last line of defence: a log event that carries a secret prints it masked."""
    configure_logging(
        "json", "info", environment_secrets({"DATABASE_URL": f"postgresql://a:{PASSWORD}@h/d", **SECRET_ENV})
    )
    try:
        raise RuntimeError(f"boom with {LLM_KEY}")  # noqa: TRY301  (an exception with a secret, logged)
    except RuntimeError:
        get_logger().exception("test.leak", url=f"postgresql://a:{PASSWORD}@h/d", nested={"k": [JWT_SECRET]})
    err = capsys.readouterr().err
    assert "test.leak" in err
    assert_no_secret(err)
    assert json.loads(err.splitlines()[-1])["nested"] == {"k": [MASK]}


# --- the web process: callers' tokens and the JWT secret -------------------------------------


def test_refused_tokens_and_the_jwt_secret_reach_no_answer_or_log(target: Target) -> None:
    """Bad, expired and foreign tokens get 401s that quote neither the token nor the secret."""
    catalog = Catalog()
    catalog.declare("secret_web")
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": now + 60}
    tokens = [
        jwt.encode(claims, "another-secret-0123456789-0123456789", algorithm="HS256"),  # wrong key
        jwt.encode({**claims, "exp": now - 60}, JWT_SECRET, algorithm="HS256"),  # expired
        jwt.encode({**claims, "aud": "anon"}, JWT_SECRET, algorithm="HS256"),  # audience
        "not.a.jwt-but-long-enough",
    ]
    with psycopg.connect(target.url, autocommit=True) as conn:
        pgmq.ensure_queue(conn, "secret_web")
    settings = WebSettings(PGMQ_WORKER_JWT_SECRET=JWT_SECRET)
    with captured() as logs, TestClient(create_app(target, settings=settings, catalog=catalog)) as client:
        answers = [
            client.post("/jobs/secret_web", json={}, headers={"Authorization": f"Bearer {t}"}) for t in tokens
        ]
        answers += [client.get(f"/jobs/{uuid.uuid4()}/events", params={"access_token": t}) for t in tokens]
    assert [a.status_code for a in answers] == [401] * len(answers)
    text = json.dumps([a.text for a in answers]) + json.dumps(logs, default=str)
    assert_no_secret(text, (*SECRETS, *tokens, *(t.split(".")[2] for t in tokens[:3])))


# --- a provider that refuses the key and echoes it -------------------------------------------


class EchoesTheKey(BaseHTTPRequestHandler):
    """401 with the Authorization header quoted back, as some OpenAI-compatible servers do."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(
            {"error": f"Incorrect API key provided: {self.headers.get('Authorization')}"}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def refusing_provider() -> Iterator[str]:
    with serving(EchoesTheKey, None) as base:
        yield base


@pytest.mark.parametrize("provider", ["echoes_401", "closed_port"])
def test_a_refused_provider_key_reaches_no_log_job_row_or_dead_letter(
    provider: str, db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A 401 quoting the key (or a closed port): the job is dead, and the key is nowhere."""
    pgmq.ensure_queue(conn, "secret_llm")
    with refusing_provider() as base:
        base_url = f"{base}/v1" if provider == "echoes_401" else "http://127.0.0.1:1/v1"
        argv, env = worker_process(
            db_url, "tests.support.secret_handlers", **WORKER_ENV, PGMQ_WORKER_LLM_BASE_URL=base_url
        )
        sent = CliRunner().invoke(
            main,
            ["send", "secret_llm", '{"text": "hi"}', "--import", "tests.support.secret_handlers"],
            env={"DATABASE_URL": db_url},
        )
        assert sent.exit_code == 0, sent.output
        done = subprocess.run(
            [*argv, "--burst"], cwd=REPO, env=env, capture_output=True, timeout=120, check=False
        )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    stored = json.dumps(
        [list(r) for r in conn.execute("SELECT status, error::text FROM pgmq_worker.jobs").fetchall()]
    )
    letters = CliRunner().invoke(main, ["dlq", "list", "secret_llm"], env={"DATABASE_URL": db_url}).output
    assert '"dead"' in stored, stored
    assert ("HTTP 401" if provider == "echoes_401" else "ConnectError") in letters, letters
    for text in (output, stored, letters):
        assert_no_secret(text)
        assert "Bearer sk-" not in text


# --- a handler that raises with the secrets in its message ------------------------------------


def test_a_handler_raising_with_secrets_stores_and_logs_them_masked(
    password_role: tuple[str, str], db_url: str, tmp_path: Path
) -> None:
    """A handler raises with the API key, DATABASE_URL and its password in the message, chained to
    an httpx error whose URL carries the webhook secret: retried and dead-lettered, the job rows'
    errors, the dead-letter record, `dlq list`, the webhook bodies and the log hold none of them,
    only `***`."""
    role, where = password_role
    url = url_of(role, PASSWORD.replace("%", "%25"), where, str(conninfo.conninfo_to_dict(db_url)["dbname"]))
    hooks: list[bytes] = []
    with serving(RecordsWebhooks, hooks) as base, psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pgmq_worker.grant_access(%s, 'worker')", (role,))
        for queue in ("secret_retried", "secret_dead"):
            pgmq.ensure_queue(admin, queue)
            enqueue(admin, queue, {}, webhook_url=f"{base}/hook")
        argv, env = worker_process(
            url, "tests.support.secret_handlers", **WORKER_ENV, PGMQ_WORKER_WEBHOOK_ALLOW_PRIVATE="1"
        )
        argv += ["--queue", "secret_retried", "--queue", "secret_dead"]
        log = tmp_path / "worker.log"
        stored = run_until_both_failed(argv, env, log, admin, hooks)
        letters = dead(admin, "secret_dead")
    assert [(q, s) for q, s, _ in stored] == [("secret_dead", "dead"), ("secret_retried", "failed")], stored
    listed = CliRunner().invoke(main, ["dlq", "list", "secret_dead"], env={"DATABASE_URL": db_url})
    assert listed.exit_code == 0, listed.output
    assert len(letters) == 1, letters
    output = log.read_text()
    assert '"job.retry_scheduled"' in output, output
    assert '"job.dead_lettered"' in output, output
    texts = {
        "log": output,
        "job rows": json.dumps(stored),
        "dead letter": json.dumps(letters),
        "dlq list": listed.output,
        "webhooks": b"\n".join(hooks).decode(),
    }
    for name, text in texts.items():
        assert_no_secret(text, (*SECRETS, PASSWORD.replace("%", "%25"), WEBHOOK_SECRET.replace("=", "%3D")))
        if name != "log":
            assert f"call failed with key {MASK}" in text, (name, text)
    record = letters[0]["error"]
    assert "HTTPStatusError" in record["traceback"], record  # the chain kept, masked
    assert f"key={MASK}" in record["traceback"], record


class RecordsWebhooks(BaseHTTPRequestHandler):
    """Keeps each POSTed body in the server's state (a list); answers 200."""

    def do_POST(self) -> None:
        self.server.state.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def run_until_both_failed(
    argv: list[str], env: dict[str, str], log: Path, admin: psycopg.Connection[Any], hooks: list[bytes]
) -> list[tuple[Any, ...]]:
    """Run the worker until both jobs have an error and their failed/dead webhooks came; stop it."""
    errors = "SELECT queue, status, error::text FROM pgmq_worker.jobs WHERE error IS NOT NULL ORDER BY queue"
    stored: list[tuple[Any, ...]] = []
    with spawned(argv, env, log) as proc:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            stored = admin.execute(errors).fetchall()
            if len(stored) == 2 and sum(b'"error"' in h for h in hooks) == 2:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    return stored
