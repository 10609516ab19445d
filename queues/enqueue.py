"""Enqueue from web processes: sync for Flask, async for FastAPI, on the caller's connection.

The caller passes an open connection (or one inside its own transaction), so the message commits
or rolls back with the caller's writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import psycopg
from pydantic import BaseModel

from db import durations, storable
from db.durations import Seconds
from queues import job_sends
from queues.catalog import Catalog
from queues.contract import Contract, QueueRef, queue_of
from queues.errors import InvalidPayload, NoJobRows, PayloadTooLarge, UnknownQueue

MAX_PAYLOAD_BYTES = 1024 * 1024  # pgmq stores jsonb rows; a megabyte is already a big message


MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Where a message went, and its job."""

    queue: str
    msg_id: int
    job_id: UUID
    created: bool = True  # False: an active job with the same idempotency key was returned


def prepare(ref: QueueRef, payload: Any) -> tuple[str, dict[str, Any]]:
    """Validate the payload against the contract (when given) and return (queue, JSON object).

    The object holds JSON types only (db.storable: what may be stored), checked and within the
    size limit; InvalidPayload otherwise.
    """
    body = _storable(_object(ref, payload))
    _check_size(storable.dumps_bytes(body))
    return queue_of(ref), body


def encode(ref: QueueRef, payload: Any) -> str:
    """prepare's checks, returning the object as JSON text (what travels to the database)."""
    text = _dumps(_object(ref, payload))
    _check_size(text.encode())
    return text


def _object(ref: QueueRef, payload: Any) -> dict[str, Any]:
    """The payload as a JSON object: validated by the contract (when given); InvalidPayload if not one."""
    if isinstance(ref, Contract):
        # Dumped by pydantic, then checked by the storage rule: a model's str field may hold a NUL.
        body: Any = ref.parse(payload).model_dump(mode="json")
    elif isinstance(payload, BaseModel):
        body = payload.model_dump(mode="json")
    else:
        body = payload
    if not isinstance(body, dict):
        raise InvalidPayload(f"a message must be a JSON object, got {type(body).__name__}")
    return body


def _storable(body: Any) -> Any:
    try:
        return storable.jsonable(body)
    except storable.Unstorable as exc:
        raise InvalidPayload(f"the payload cannot be stored: {exc}") from None


def _dumps(body: Any) -> str:
    try:
        return storable.dumps(body)
    except storable.Unstorable as exc:
        raise InvalidPayload(f"the payload cannot be stored: {exc}") from None


def encode_batch(ref: QueueRef, payloads: Sequence[Any]) -> str:
    """encode's checks for every payload, returning them as one JSON array text.

    Plain dicts (the common batch) are encoded in one call; when the whole array is within the
    size limit every member is, else each is measured to name the one over it.
    """
    if isinstance(ref, Contract) or not all(type(p) is dict for p in payloads):
        texts = []
        for i, payload in enumerate(payloads):
            try:
                texts.append(encode(ref, payload))
            except InvalidPayload as exc:  # the same error, saying which payload
                raise type(exc)(f"payload {i}: {exc}") from exc.__cause__
        return "[" + ",".join(texts) + "]"
    try:
        data = storable.dumps_bytes(list(payloads))
    except storable.Unstorable as exc:
        index, *rest = exc.path  # the array's index first: say which payload, from its own root
        exc.path = tuple(rest)
        raise InvalidPayload(f"payload {index} cannot be stored: {exc}") from None
    if len(data) > MAX_PAYLOAD_BYTES:
        for payload in payloads:
            _check_size(storable.dumps_bytes(payload))
    return data.decode()


def _check_size(data: bytes) -> None:
    size = len(data)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit: "
            "store large data in a table or bucket and send its id"
        )


def delay_seconds(delay: Seconds | None) -> int:
    """Whole seconds of delay (pgmq.send takes integers); InvalidPayload if negative."""
    if delay is None:
        return 0
    try:
        seconds = durations.non_negative(delay, "delay").total_seconds()
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    return round(seconds)  # pgmq.send takes whole seconds on every version we support


def owner_id(owner: UUID | str | None) -> UUID | None:
    """The owner as a UUID; InvalidPayload if it is not one."""
    if owner is None or isinstance(owner, UUID):
        return owner
    try:
        return UUID(str(owner))
    except ValueError:
        raise InvalidPayload(f"owner must be a UUID (a Supabase user id), got {owner!r}") from None


MAX_WEBHOOK_URL = 2000


def _webhook(url: str | None) -> str | None:
    """A job's callback URL: http(s) with a host, at most 2000 characters; InvalidPayload if not."""
    if url is None:
        return None
    parsed = urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise InvalidPayload(f"webhook_url must be an http(s) URL with a host, got {url!r}")
    if len(url) > MAX_WEBHOOK_URL:
        raise InvalidPayload(f"webhook_url is over {MAX_WEBHOOK_URL} characters")
    _text("webhook_url", url)
    return url


def _text(name: str, text: str) -> None:
    """InvalidPayload unless a text column can hold `text` (checked before any statement is sent)."""
    try:
        storable.check_text(text)
    except storable.Unstorable as exc:
        raise InvalidPayload(f"{name} {exc.reason}") from None


def _key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidPayload(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    _text("idempotency_key", key)
    return key


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One enqueue's checked parameters, built before any statement is sent (sync or async).

    `Outgoing.of` makes every check; `aenqueue_each` sends many of them in one statement.
    """

    queue: str
    body: str
    delay_s: int
    owner: UUID | None
    key: str | None
    webhook: str | None

    @classmethod
    def of(
        cls,
        ref: QueueRef,
        payload: Any,
        delay: Seconds | None,
        owner: UUID | str | None,
        *,
        key: str | None,
        hook: str | None,
        catalog: Catalog | None,
    ) -> Outgoing:
        """Every check enqueue and aenqueue make, in the order they have always made them."""
        queue, body = queue_of(ref), encode(ref, payload)
        _with_job_rows(catalog, queue)
        return cls(queue, body, delay_seconds(delay), owner_id(owner), _key(key), _webhook(hook))

    def params(self, *, key: str | None) -> dict[str, Any]:
        """send_job's keyword arguments (`key` None: the first, unkeyed, statement)."""
        return {"owner": self.owner, "key": key, "webhook": self.webhook}

    def sent(self, sent: tuple[UUID, int] | None) -> Enqueued:
        """The new job; UnknownQueue if send_job found no such queue."""
        if sent is None:
            raise _unknown(self.queue)
        return Enqueued(self.queue, sent[1], sent[0])

    def existing(self, found: tuple[UUID, int]) -> Enqueued:
        """The unfinished job an earlier enqueue with the same idempotency key made."""
        return Enqueued(self.queue, found[1], found[0], created=False)


def _with_job_rows(catalog: Catalog | None, queue: str) -> None:
    """NoJobRows when the caller's catalog says the queue's handler runs without job rows.

    An enqueue returns a job; such a queue's worker would leave that row `queued` for ever.
    """
    spec = catalog.get(queue) if catalog is not None else None
    if spec is not None and not spec.job_rows:
        raise NoJobRows(
            f"queue {queue!r} runs without job rows (job_rows=False): send with pgmq.send / "
            "pgmq.send_batch (queues.pgmq), which creates no job"
        )


def _unknown(queue: str) -> UnknownQueue:
    return UnknownQueue(f"no queue named {queue!r}: start a worker for it, or create it first")


def enqueue(
    conn: psycopg.Connection[Any],
    ref: QueueRef,
    payload: Any,
    *,
    delay: Seconds | None = None,
    owner: UUID | str | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    catalog: Catalog | None = None,
) -> Enqueued:
    """Send one message and create its job row on the caller's connection (and transaction).

    With an idempotency key, a second enqueue while the first job is unfinished returns that job.
    With a webhook_url, the worker POSTs the job's status changes there (signed). With a catalog
    (the process's declared queues), a queue declared without job rows is refused (NoJobRows).
    """
    s = Outgoing.of(ref, payload, delay, owner, key=idempotency_key, hook=webhook_url, catalog=catalog)
    if s.key is None:  # one statement, one round trip
        return s.sent(job_sends.send_job(conn, s.queue, s.body, s.delay_s, **s.params(key=None)))
    if (found := job_sends.active_job(conn, s.queue, s.key)) is not None:
        return s.existing(found)
    try:
        with conn.transaction():  # a savepoint: a lost race must not abort the caller's transaction
            sent = job_sends.send_job(conn, s.queue, s.body, s.delay_s, **s.params(key=s.key))
    except psycopg.errors.UniqueViolation:
        # A concurrent enqueue with the same key won; ours (message included) was rolled back.
        if (found := job_sends.active_job(conn, s.queue, s.key)) is None:
            raise
        return s.existing(found)
    return s.sent(sent)


async def aenqueue(
    conn: psycopg.AsyncConnection[Any],
    ref: QueueRef,
    payload: Any,
    *,
    delay: Seconds | None = None,
    owner: UUID | str | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    catalog: Catalog | None = None,
) -> Enqueued:
    """The async twin of enqueue, for FastAPI: the same checks (Outgoing), awaited statements."""
    s = Outgoing.of(ref, payload, delay, owner, key=idempotency_key, hook=webhook_url, catalog=catalog)
    if s.key is None:
        return await asend(conn, s)
    if (found := await job_sends.aactive_job(conn, s.queue, s.key)) is not None:
        return s.existing(found)
    try:
        async with conn.transaction():
            sent = await job_sends.asend_job(conn, s.queue, s.body, s.delay_s, **s.params(key=s.key))
    except psycopg.errors.UniqueViolation:
        if (found := await job_sends.aactive_job(conn, s.queue, s.key)) is None:
            raise
        return s.existing(found)
    return s.sent(sent)


def enqueue_batch(
    conn: psycopg.Connection[Any],
    ref: QueueRef,
    payloads: Sequence[Any],
    *,
    delay: Seconds | None = None,
    owner: UUID | str | None = None,
    catalog: Catalog | None = None,
) -> list[Enqueued]:
    """Send many messages (and their job rows) in one statement; all are validated first."""
    queue = queue_of(ref)
    bodies = encode_batch(ref, payloads)
    delay_s, who = delay_seconds(delay), owner_id(owner)
    if not payloads:
        return []
    _with_job_rows(catalog, queue)
    sent = job_sends.send_job_batch(conn, queue, bodies, len(payloads), delay_s=delay_s, owner=who)
    if not sent:
        raise _unknown(queue)
    return [Enqueued(queue, msg_id, job_id) for job_id, msg_id in sent]


async def asend(conn: psycopg.AsyncConnection[Any], s: Outgoing) -> Enqueued:
    """One checked enqueue without an idempotency key: one statement, one round trip."""
    if s.key is not None:
        raise ValueError("asend takes an unkeyed enqueue: aenqueue handles idempotency keys")
    return s.sent(await job_sends.asend_job(conn, s.queue, s.body, s.delay_s, **s.params(key=None)))


async def aenqueue_each(conn: psycopg.AsyncConnection[Any], sends: Sequence[Outgoing]) -> list[Enqueued]:
    """Many checked, unkeyed enqueues of one queue (`Outgoing.of`) in one statement, in order.

    Each keeps its own delay and owner; the statement commits or fails for all of them. The web
    process sends concurrent `POST /jobs` requests this way (web/coalesce.py). UnknownQueue if
    the queue does not exist.
    """
    if not sends:
        return []
    queue = sends[0].queue
    if any(s.queue != queue or s.key is not None or s.webhook is not None for s in sends):
        raise ValueError("aenqueue_each takes unkeyed enqueues of one queue, without webhooks")
    bodies = "[" + ",".join(s.body for s in sends) + "]"
    sent = await job_sends.asend_job_batch(
        conn, queue, bodies, len(sends), delays=[s.delay_s for s in sends], owners=[s.owner for s in sends]
    )
    if not sent:
        raise _unknown(queue)
    return [Enqueued(queue, msg_id, job_id) for job_id, msg_id in sent]
