"""The storage rule at every boundary, against a real database: refused there with that
boundary's error, or stored and read back equal; never a 5xx, a stopped worker or a job left
`running`/`queued` for a delivery that ended."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from db import storable
from db.connect import Target, connect, sync_pool
from queues import aenqueue, enqueue, enqueue_batch, pgmq
from queues.errors import InvalidPayload
from tests.support.fixtures import BurstWorker
from tests.support.helpers import dead, job, rows, run_burst, send
from tests.support.processes import spawned, worker_process
from tests.support.values import JSON_TEXT, TEXT, TOO_DEEP, anything, json_like, nested, same, typed
from web import create_app
from web.flask_example import jobs_blueprint
from web.settings import WebSettings
from worker import Backoff, Context, Registry, handler
from worker.cli import main

FAST = Backoff(base=0.05, cap=0.2, jitter=0)
DB = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
QUEUE = "stored"
CLI_QUEUE = "stored_cli"  # tests/support/storage_handlers.py's (imported here, it would register globally)


def expected(value: Any) -> tuple[Any, storable.Unstorable | None]:
    """What the rule makes of the value: (its JSON form, None) or (None, the refusal)."""
    try:
        return storable.jsonable(value), None
    except storable.Unstorable as exc:
        return None, exc


def message_of(conn: psycopg.Connection[Any], msg_id: int) -> Any:
    [row] = [r for r in rows(conn, QUEUE) if r["msg_id"] == msg_id]
    return row["message"]


# -- enqueue, aenqueue, enqueue_batch, pgmq.send, ctx.enqueue's encode ---------------------------


@pytest.fixture
def uploads(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The caller's own table, and the queue."""
    conn.execute("CREATE TABLE uploads (id serial PRIMARY KEY, note text)")
    pgmq.ensure_queue(conn, QUEUE)
    return conn


def test_enqueue_refuses_a_nul_and_the_callers_transaction_still_works(
    uploads: psycopg.Connection[Any],
) -> None:
    """The issue's case: InvalidPayload before anything is sent; the caller's insert commits."""
    conn = uploads
    with conn.transaction():
        conn.execute("INSERT INTO uploads (note) VALUES ('mine')")
        with pytest.raises(InvalidPayload, match=r"\$\.s: contains NUL"):
            enqueue(conn, QUEUE, {"s": "a\x00b"})
        with pytest.raises(InvalidPayload, match="idempotency_key contains NUL"):
            enqueue(conn, QUEUE, {"s": "ok"}, idempotency_key="k\x00")
        with pytest.raises(InvalidPayload, match="webhook_url contains NUL"):
            enqueue(conn, QUEUE, {"s": "ok"}, webhook_url="https://example.com/\x00")
        with pytest.raises(InvalidPayload, match="payload 1 cannot be stored"):
            enqueue_batch(conn, QUEUE, [{"s": "ok"}, {"s": "\x00"}])
        with pytest.raises(InvalidPayload, match="bytes are not JSON"):
            pgmq.send(conn, QUEUE, {"b": b"\x00\x01"})
        conn.execute("INSERT INTO uploads (note) VALUES ('still mine')")
        sent = enqueue(conn, QUEUE, {"s": "a b"})
    notes = [n for (n,) in conn.execute("SELECT note FROM uploads ORDER BY id")]
    assert notes == ["mine", "still mine"]
    assert [r["message"] for r in rows(conn, QUEUE)] == [{"s": "a b"}]
    assert sent.created


@DB
@given(value=anything())
def test_enqueue_stores_what_the_rule_allows_and_refuses_the_rest_before_sending(
    uploads: psycopg.Connection[Any], value: Any
) -> None:
    """Any payload: InvalidPayload with the path (the transaction still usable), or the message
    stored and read back equal to its JSON form."""
    conn = uploads
    form, refusal = expected({"v": value})
    before = len(rows(conn, QUEUE))
    with conn.transaction():
        conn.execute("INSERT INTO uploads (note) VALUES ('mine')")
        if refusal is not None:
            with pytest.raises(InvalidPayload) as caught:
                enqueue(conn, QUEUE, {"v": value})
            assert refusal.at() in str(caught.value)
            conn.execute("INSERT INTO uploads (note) VALUES ('after')")  # not aborted
            assert len(rows(conn, QUEUE)) == before
            return
        sent = enqueue(conn, QUEUE, {"v": value})
    assert same(message_of(conn, sent.msg_id), form)


@DB
@given(values=st.lists(json_like(), min_size=1, max_size=4))
def test_enqueue_batch_and_aenqueue_keep_the_same_rule(
    uploads: psycopg.Connection[Any], db_url: str, values: list[Any]
) -> None:
    """A batch is refused whole if any payload is (naming which), else every one reads back equal;
    aenqueue refuses or stores exactly as enqueue does."""
    conn = uploads
    payloads = [{"v": v} for v in values]
    forms = [expected(p) for p in payloads]
    if any(refusal is not None for _, refusal in forms):
        before = len(rows(conn, QUEUE))
        with pytest.raises(InvalidPayload, match=r"payload [0-9]+ cannot be stored"):
            enqueue_batch(conn, QUEUE, payloads)
        assert len(rows(conn, QUEUE)) == before
    else:
        sent = enqueue_batch(conn, QUEUE, payloads)
        for s, (form, _) in zip(sent, forms, strict=True):
            assert same(message_of(conn, s.msg_id), form)

    async def one(payload: dict[str, Any]) -> int | InvalidPayload:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            try:
                return (await aenqueue(aconn, QUEUE, payload)).msg_id
            except InvalidPayload as exc:
                await aconn.execute("SELECT 1")  # the connection is fine
                return exc

    for payload, (form, refusal) in zip(payloads, forms, strict=True):
        outcome = asyncio.run(one(payload))
        if refusal is not None:
            assert isinstance(outcome, InvalidPayload)
        else:
            assert isinstance(outcome, int)
            assert same(message_of(conn, outcome), form)


def test_cli_send_refuses_what_may_not_be_stored(db_url: str, uploads: psycopg.Connection[Any]) -> None:
    """`pgmq-worker send` answers a one-line error (exit 1) and sends nothing; deep JSON is not JSON."""
    env = {"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_LEVEL": "warning"}
    for payload, message in [
        ('{"s": "a\\u0000b"}', "$.s: contains NUL"),
        ('{"s": "\\ud800"}', "lone surrogate"),
        ('{"x": NaN}', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        (json.dumps(TOO_DEEP), "nested deeper than 128 levels"),
    ]:
        result = CliRunner().invoke(main, ["send", QUEUE, payload], env=env, catch_exceptions=False)
        assert result.exit_code == 1, result.output
        assert message in result.output
    assert rows(uploads, QUEUE) == []


# -- POST /jobs (FastAPI and the Flask blueprint) ------------------------------------------------

BODIES = st.one_of(
    # ensure_ascii: NUL and lone surrogates travel as \u0000 and \ud800 escapes
    anything().map(lambda v: json.dumps({"v": v}, default=repr, skipkeys=True).encode()),
    json_like().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(1, 100_000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"v":' + b"[" * n + b"0" + b"]" * n + b"}"),  # balanced, deep
    st.integers(1, 3000).map(lambda n: b'{"k":' * n + b"0" + b"}" * n),
    st.sampled_from([b'{"v": NaN}', b'{"v": 1e400}', b'{"v": "\\u0000"}', b"\xff\xfe", b"{" * 1000]),
)


@pytest.fixture
def web(target: Target, conn: psycopg.Connection[Any]) -> Iterator[tuple[TestClient, Any]]:
    """The FastAPI app and the Flask blueprint on the test database, with a plain queue."""
    pgmq.ensure_queue(conn, QUEUE)
    pool = sync_pool(target, min_size=1, max_size=2)
    pool.open(wait=True)
    flask = Flask(__name__)
    flask.register_blueprint(jobs_blueprint(pool))
    try:
        with TestClient(create_app(target, settings=WebSettings())) as client:
            yield client, flask.test_client()
    finally:
        pool.close()


# psycopg_pool's background threads jitter new connections' lifetimes with the global `random` while
# Hypothesis draws the next body in this thread; Hypothesis takes that for a strategy using random.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@DB
@given(body=BODIES)
def test_post_jobs_answers_every_body_with_a_4xx_or_stores_it_equal(
    web: tuple[TestClient, Any], conn: psycopg.Connection[Any], body: bytes
) -> None:
    """Unparseable: 400 invalid_json; parsed but not storable: 422 invalid_payload; else 202 and the
    stored message equals what was posted. Both frameworks answer alike; never a 5xx."""
    fastapi, flask = web
    headers = {"Content-Type": "application/json"}
    answers = [
        (fastapi_answer := fastapi.post(f"/jobs/{QUEUE}", content=body, headers=headers)).status_code,
        flask.post(f"/jobs/{QUEUE}", data=body, headers=headers).status_code,
    ]
    assert answers[0] == answers[1], body[:200]
    status = answers[0]
    assert status < 500, fastapi_answer.text
    try:
        parsed = storable.loads(body)
    except storable.InvalidJson:
        assert status == 400 and fastapi_answer.json()["error"]["code"] == "invalid_json"
        return
    if not isinstance(parsed, dict):  # nothing at all is a 400, another JSON value a 422
        assert status == (400 if parsed is None else 422), fastapi_answer.text
        return
    form, refusal = expected(parsed)
    if refusal is not None:
        assert status == 422, fastapi_answer.text
        error = fastapi_answer.json()["error"]
        assert error["code"] == "invalid_payload" and refusal.reason in error["message"]
        return
    assert status == 202, fastapi_answer.text
    assert same(message_of(conn, fastapi_answer.json()["msg_id"]), form)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[" * 1000, 400, "invalid_json"),
        (b"[" * 100_000, 400, "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        (json.dumps({"v": nested(500)}).encode(), 400, "invalid_json"),
        (json.dumps({"v": nested(120)}).encode(), 202, None),
        (b'{"text": "scanned\\u0000page"}', 422, "invalid_payload"),
        (b'{"text": "\\udc80"}', 422, "invalid_payload"),
        (b'{"v": NaN}', 400, "invalid_json"),
    ],
)
def test_post_jobs_deep_and_unstorable_bodies_are_4xx(
    web: tuple[TestClient, Any], body: bytes, status: int, code: str
) -> None:
    """The issue's bodies: 1,000 and 100,000 `[` (a RecursionError, a reset), a NUL, a lone surrogate."""
    fastapi, flask = web
    answer = fastapi.post(f"/jobs/{QUEUE}", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json().get("error", {}).get("code") == code
    assert flask.post(f"/jobs/{QUEUE}", data=body).status_code == status


# -- the worker: results, progress reports, step outputs -----------------------------------------

KINDS = st.sampled_from(["result", "detail", "step", "output"])


def storing_worker(cases: dict[int, tuple[str, Any]]) -> Registry:
    """A handler storing cases[i]'s value its way: as the result, a progress detail or step, a step output."""
    reg = Registry()

    @handler(QUEUE, registry=reg, max_attempts=3, backoff=FAST)
    async def store(payload: dict[str, Any], ctx: Context) -> Any:
        kind, value = cases[payload["i"]]
        if kind == "result":
            return value
        if kind == "detail":
            await ctx.progress(50, detail={"v": value})
        elif kind == "step":
            await ctx.progress(50, step=value)
        else:
            return {"out": await ctx.step("make", lambda: value)}
        return "reported"

    return reg


def check_stored(conn: psycopg.Connection[Any], msg_id: int, kind: str, value: Any) -> None:
    """The delivery ended as the rule says: succeeded with the value stored, or dead (invalid_result)."""
    row = job(conn, QUEUE, msg_id)
    stored_as = {"v": value} if kind == "detail" else value
    form, refusal = expected(stored_as)
    if kind == "step" and isinstance(value, str):
        try:
            storable.check_text(value)
        except storable.Unstorable as exc:
            refusal = exc
    if refusal is not None:
        assert row["status"] == "dead", (kind, value, row)
        assert row["error"]["type"] == "InvalidResult"
        field = {"result": "result", "detail": "detail", "step": "step", "output": "output"}[kind]
        assert refusal.at(field) in row["error"]["message"], row["error"]["message"]
        return
    assert row["status"] == "succeeded", (kind, value, row["error"])
    if kind == "result":
        assert same(row["result"], form)
    elif kind == "detail":
        assert same(row["detail"], form)
    elif kind == "step":
        assert row["step"] == value
    else:
        assert same(row["result"], {"out": form})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cases=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["result", "detail", "output"]), anything()),
            st.tuples(st.just("step"), TEXT.filter(lambda s: 0 < len(s) <= 200)),
        ),
        min_size=1,
        max_size=12,
    )
)
# Found by hypothesis: a step output past 64 bits came back from the first run as a float.
@example(cases=[("output", -(2**63) - 1), ("output", 2**64), ("result", 10**30)])
def test_a_burst_stores_each_handlers_value_or_dead_letters_that_delivery_alone(
    target: Target, conn: psycopg.Connection[Any], cases: list[tuple[str, Any]]
) -> None:
    """Results, progress details and steps, step outputs: each delivery succeeds with its value
    stored equal, or is dead (`invalid_result`, the path named) at once; the worker returns."""
    table = dict(enumerate(cases))
    ids = send(conn, QUEUE, *({"i": i} for i in table))
    run_burst(target, storing_worker(table))
    assert rows(conn, QUEUE) == []
    for msg_id, (kind, value) in zip(ids, cases, strict=True):
        check_stored(conn, msg_id, kind, value)
    left = conn.execute("SELECT count(*) FROM pgmq_worker.jobs WHERE status IN ('running', 'queued')")
    assert left.fetchone() == (0,)


# -- the "Done when" run: good jobs with bad ones among them ------------------------------------


def test_a_burst_over_good_and_bad_jobs_succeeds_the_good_and_dead_letters_the_bad_readably(
    conn: psycopg.Connection[Any], burst_worker: BurstWorker
) -> None:
    """Results with NUL, bytes, NaN; progress with a NUL step or detail; step outputs with a NUL:
    each bad delivery is dead (`invalid_result`, one attempt) with the field and path named, every
    good one succeeded, and the burst worker returns normally."""
    bad: dict[int, tuple[str, Any, str]] = {
        1: ("result", {"text": "scanned\x00page"}, "result.text: contains NUL"),
        3: ("result", {"blob": b"\x00\x01"}, "result.blob: bytes are not JSON"),
        5: ("result", {"score": float("nan")}, "result.score: NaN is not JSON"),
        7: ("step", "ocr\x00", "ctx.progress: step: contains NUL"),
        9: ("detail", {"pages": [{"text": "a\x00"}]}, "detail.v.pages[0].text: contains NUL"),
        11: ("output", {"pages": [{}, {}, {}, {"text": "x\x00"}]}, "output.pages[3].text: contains NUL"),
        13: ("result", {"when": object()}, "result.when: object is not a JSON type"),
    }
    cases = {i: (bad[i][0], bad[i][1]) if i in bad else ("result", {"n": i, "ok": True}) for i in range(16)}
    ids = send(conn, QUEUE, *({"i": i} for i in cases))
    burst_worker(storing_worker(cases))  # returns: the worker did not exit or hang
    assert rows(conn, QUEUE) == []
    records = {r["payload"]["i"]: r for r in dead(conn, QUEUE)}
    assert sorted(records) == sorted(bad)
    for i, msg_id in enumerate(ids):
        row = job(conn, QUEUE, msg_id)
        if i not in bad:
            assert (row["status"], row["result"]) == ("succeeded", {"n": i, "ok": True})
            continue
        assert (row["status"], row["attempts"]) == ("dead", 1), row
        assert records[i]["reason"] == "invalid_result"
        assert bad[i][2] in row["error"]["message"], row["error"]["message"]
    assert [r[0] for r in conn.execute("SELECT name FROM pgmq_worker.job_steps WHERE status = 'done'")] == []


# -- dead letters and job errors are always writable ---------------------------------------------


def test_errors_holding_nul_or_surrogates_and_payloads_python_cannot_rewrite_still_dead_letter(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """Error text is sanitised, not refused; the payload is copied into the record as stored (a
    number past a double, sent by another client, is kept as it was)."""

    @handler(QUEUE, registry=reg, max_attempts=1, backoff=FAST)
    async def fail(payload: dict[str, Any], ctx: Context) -> None:
        raise RuntimeError("bad page \x00 and \udc80 from a file name")

    pgmq.ensure_queue(conn, QUEUE)
    conn.execute("SELECT pgmq.send(%s, %s::jsonb)", (QUEUE, '{"huge": 1e400, "n": 1}'))
    burst_worker(reg)
    [record] = dead(conn, QUEUE)
    assert record["error"]["message"] == "bad page \\u0000 and \\udc80 from a file name"
    assert record["payload"]["n"] == 1 and record["payload"]["huge"] == 10**400
    [(status,)] = conn.execute("SELECT status FROM pgmq_worker.jobs WHERE queue = %s", (QUEUE,))
    assert status == "dead"


def test_an_artifact_name_with_a_nul_finds_nothing_instead_of_failing(
    web: tuple[TestClient, Any], conn: psycopg.Connection[Any]
) -> None:
    """`GET /jobs/{id}/artifacts/a%00b` on a job the caller may see: 404, not a failed statement."""
    fastapi, _ = web
    sent = enqueue(conn, QUEUE, {"s": "x"})
    for name in ["a%00b.wav", "%ED%A0%80.wav", "ok.wav"]:
        answer = fastapi.get(f"/jobs/{sent.job_id}/artifacts/{name}")
        assert answer.status_code == 404, (name, answer.text)


# -- ctx.enqueue, ctx.fan_out, webhook bodies ----------------------------------------------------


def test_ctx_enqueue_and_fan_out_refuse_a_bad_payload_before_sending_anything(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """InvalidPayload at the call, naming the path; the delivery is dead (`invalid_payload`), and no
    handoff or child was sent."""
    seen: list[str] = []

    @handler(QUEUE, registry=reg, max_attempts=3, backoff=FAST)
    async def parent(payload: dict[str, Any], ctx: Context) -> None:
        try:
            if payload["how"] == "enqueue":
                ctx.enqueue("children", {"ok": 1})  # would be sent with the ack: there is none
                ctx.enqueue("children", {"text": "a\x00b"})
            else:
                await ctx.fan_out("kids", "children", [{"n": 1}, {"blob": b"\x00\x01"}])
        except InvalidPayload as exc:
            seen.append(str(exc))
            raise

    @handler("children", registry=reg)
    async def child(payload: dict[str, Any], ctx: Context) -> None:
        pass

    pgmq.ensure_queue(conn, "children")
    send(conn, QUEUE, {"how": "enqueue"}, {"how": "fan_out"})
    burst_worker(reg)
    assert sorted(seen) == sorted(
        [
            "the payload cannot be stored: $.text: contains NUL (U+0000), which Postgres text and jsonb"
            " cannot hold",
            "the payload cannot be stored: $.blob: bytes are not JSON: encode them (base64) or store the file"
            " with ctx.artifact",
        ]
    )
    assert {r["reason"] for r in dead(conn, QUEUE)} == {"invalid_payload"}
    assert rows(conn, "children") == []
    assert conn.execute("SELECT count(*) FROM pgmq_worker.fan_outs").fetchone() == (0,)


def test_webhook_bodies_use_the_same_encoding_as_the_job_row(
    conn: psycopg.Connection[Any], reg: Registry, burst_worker: BurstWorker
) -> None:
    """The `succeeded` body's result reads exactly as the job row's (ISO datetimes, UUID strings),
    and a `dead` body's error is the sanitised text."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"

    @handler(QUEUE, registry=reg, max_attempts=1)
    async def hooked(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if payload["fail"]:
            raise RuntimeError("page \x00 broke")
        return {"at": datetime(2026, 12, 1, 21, 46, tzinfo=UTC), "id": UUID(int=5), "n": (1, 2)}

    pgmq.ensure_queue(conn, QUEUE)
    ok = enqueue(conn, QUEUE, {"fail": False}, webhook_url=url)
    enqueue(conn, QUEUE, {"fail": True}, webhook_url=url)
    try:
        burst_worker(reg, webhook_secret="whsec_" + "A" * 32, webhook_allow_private=True)
    finally:
        server.shutdown()
        server.server_close()
    by_type = {e["type"]: e["data"] for e in received}
    assert by_type["job.succeeded"]["result"] == job(conn, QUEUE, ok.msg_id)["result"]
    assert by_type["job.succeeded"]["result"] == {
        "at": "2026-12-01T21:46:00Z",
        "id": "00000000-0000-0000-0000-000000000005",
        "n": [1, 2],
    }
    assert by_type["job.dead"]["error"]["message"] == "page \\u0000 broke"


CLI_ERRORS = {
    "nul_result": "the handler returned what may not be stored: result.text: contains NUL (U+0000)",
    "bytes_result": "result.blob: bytes are not JSON: encode them (base64) or store the file with ctx.",
    "nan_result": "result.score: NaN is not JSON",
    "bad_step": "ctx.progress: step: contains NUL",
    "bad_detail": "ctx.progress: detail.pages[0].text: contains NUL",
    "bad_output": "step 'ocr' returned what may not be stored: output.pages[3].text: contains NUL",
}


def test_a_burst_worker_process_over_good_and_bad_jobs_exits_0(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The issue's run, as a user would: `pgmq-worker run --burst` exits 0 (it exited 1, blaming a
    pooler, on a NUL in a result); every good job succeeded, every bad one dead with its path."""
    kinds = ["nul_result", "bytes_result", "nan_result", "bad_step", "bad_detail", "bad_output"]
    payloads = [{"kind": "good", "n": n} for n in range(18)]
    payloads[1::3] = [{"kind": k, "n": n} for n, k in enumerate(kinds, start=100)]
    ids = send(conn, CLI_QUEUE, *payloads)
    argv, env = worker_process(db_url, "tests.support.storage_handlers", PGMQ_WORKER_CONCURRENCY="8")
    with spawned([*argv, "--burst"], env, tmp_path / "worker.log") as proc:
        assert proc.wait(120) == 0, (tmp_path / "worker.log").read_text()
    assert rows(conn, CLI_QUEUE) == []
    for msg_id, payload in zip(ids, payloads, strict=True):
        row = job(conn, CLI_QUEUE, msg_id)
        if payload["kind"] == "good":
            assert (row["status"], row["result"]) == ("succeeded", {"n": payload["n"], "ok": True})
        else:
            assert (row["status"], row["attempts"]) == ("dead", 1), row
            assert CLI_ERRORS[payload["kind"]] in row["error"]["message"], row["error"]


# -- reading rows back ---------------------------------------------------------------------------


@DB
@given(text=JSON_TEXT)
@example(text='{"n": 123456789012345678901234567890, "x": 1e400, "y": -0, "z": 18446744073709551616}')
@example(text='"\\u0000"')
def test_our_connections_read_any_jsonb_as_the_stdlib_reads_its_text(target: Target, text: str) -> None:
    """A jsonb value (a payload another client sent, say) reads back through our connections as
    json.loads reads the server's own text of it: integers past 64 bits stay integers."""
    with connect(target) as ours, psycopg.connect(target.url, autocommit=True) as plain:
        try:
            [(value, server_text)] = ours.execute(
                "SELECT v, v::text FROM (SELECT %s::jsonb AS v) AS t", (text,)
            )
        except (
            psycopg.errors.DataError
        ):  # what jsonb cannot hold ("\u0000", a lone surrogate): nothing to read
            return
        [(stock,)] = plain.execute("SELECT %s::jsonb", (text,))
    assert typed(value) == typed(json.loads(server_text)) == typed(stock)
