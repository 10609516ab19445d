"""@handler declarations, queue names, contracts and backoff: the parts that need no database."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from queues import Contract, InvalidPayload, InvalidQueueName, validate_queue_name
from worker import Backoff, Context, Registry, handler
from worker.errors import HandlerRegistrationError, UnknownQueue


class Page(BaseModel):
    document_id: str
    page: int


def test_a_handler_registers_its_policy_and_model() -> None:
    """Options given as seconds or timedelta land on the Task; the annotated model is found."""
    reg = Registry()

    @handler("ocr", registry=reg, max_attempts=7, visibility_timeout=timedelta(minutes=2), timeout=90)
    async def ocr(payload: Page, ctx: Context) -> None:
        return None

    task = reg.get("ocr")
    assert task.model is Page
    assert task.is_async
    assert (task.max_attempts, task.visibility_timeout, task.timeout) == (7, 120.0, 90.0)
    assert task.read_vt == 120
    assert reg.queues() == ["ocr"]


def test_a_contract_supplies_the_queue_and_model() -> None:
    """@handler(Contract) uses the contract's queue and payload model; a sync def is not async."""
    reg = Registry()
    contract = Contract("pages", Page)

    @handler(contract, registry=reg)
    def pages(payload, ctx):  # type: ignore[no-untyped-def]
        return None

    task = reg.get("pages")
    assert task.model is Page
    assert not task.is_async


def test_unannotated_handlers_get_the_json_dict() -> None:
    """No pydantic annotation: model is None, the payload stays a dict."""
    reg = Registry()

    @handler("raw", registry=reg)
    async def raw(payload: dict[str, Any], ctx: Context) -> None:
        return None

    assert reg.get("raw").model is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"visibility_timeout": 0}, "visibility_timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": timedelta(0)}, "timeout"),
    ],
)
def test_bad_handler_options_are_refused_at_declaration(kwargs: dict[str, Any], message: str) -> None:
    """Options that cannot work fail when the module is imported, naming the option."""
    with pytest.raises(HandlerRegistrationError, match=message):
        handler("q", registry=Registry(), **kwargs)


def test_a_handler_must_take_payload_and_ctx() -> None:
    """A function with the wrong arity is refused."""
    with pytest.raises(HandlerRegistrationError, match=r"\(payload, ctx\)"):

        @handler("q", registry=Registry())
        async def one(payload: dict[str, Any]) -> None:
            return None


def test_two_handlers_for_one_queue_are_refused() -> None:
    """One queue, one handler: a second, different function is an error."""
    reg = Registry()

    @handler("dup", registry=reg)
    async def first(payload: dict[str, Any], ctx: Context) -> None:
        return None

    with pytest.raises(HandlerRegistrationError, match="already has handler"):

        @handler("dup", registry=reg)
        async def second(payload: dict[str, Any], ctx: Context) -> None:
            return None


def test_an_unknown_queue_is_a_clear_error() -> None:
    """Asking the registry for a queue nobody handles raises UnknownQueue."""
    with pytest.raises(UnknownQueue, match="nope"):
        Registry().get("nope")


@pytest.mark.parametrize(
    "name", ["", "Upper", "with-dash", "1starts_with_digit", "semi;colon", "x" * 44, "a b"]
)
def test_invalid_queue_names_are_refused(name: str) -> None:
    """Names pgmq cannot turn into tables (or that leave no room for _dlq) are refused."""
    with pytest.raises(InvalidQueueName):
        validate_queue_name(name)


@pytest.mark.parametrize("name", ["a", "lang_ocr", "_private", "x" * 43])
def test_valid_queue_names_pass(name: str) -> None:
    """Lowercase letters, digits and underscores up to 43 characters are accepted."""
    assert validate_queue_name(name) == name


def test_a_contract_refuses_payloads_that_do_not_fit() -> None:
    """Contract.parse gives InvalidPayload for a non-object or a validation failure."""
    contract = Contract("pages", Page)
    assert contract.parse({"document_id": "d", "page": 2}) == Page(document_id="d", page=2)
    with pytest.raises(InvalidPayload, match="JSON object"):
        contract.parse([1, 2])
    with pytest.raises(InvalidPayload, match="page"):
        contract.parse({"document_id": "d", "page": "two"})


@given(
    st.builds(
        Page,
        document_id=st.text(max_size=50),
        page=st.integers(min_value=-(2**31), max_value=2**31),
    )
)
def test_a_contract_payload_round_trips_through_json(page: Page) -> None:
    """What enqueue writes (model_dump json) parses back to the same model."""
    contract = Contract("pages", Page)
    assert contract.parse(page.model_dump(mode="json")) == page


@given(
    base=st.floats(min_value=0.001, max_value=100),
    factor=st.floats(min_value=1, max_value=10),
    cap=st.floats(min_value=0.001, max_value=10_000),
    attempts=st.lists(st.integers(min_value=1, max_value=10_000), min_size=2, max_size=10),
)
def test_backoff_is_monotonic_and_capped(base: float, factor: float, cap: float, attempts: list[int]) -> None:
    """The un-jittered delay never shrinks as attempts grow and never exceeds the cap."""
    b = Backoff(base=base, factor=factor, cap=cap, jitter=0.5)
    ordered = sorted(attempts)
    ceilings = [b.ceiling(a) for a in ordered]
    assert all(x <= y for x, y in itertools.pairwise(ceilings))
    assert all(c <= cap for c in ceilings)
    for a in ordered:
        d = b.delay(a)
        assert b.ceiling(a) * 0.5 <= d <= b.ceiling(a)


def test_backoff_defaults_grow_exponentially() -> None:
    """Without jitter: 2, 4, 8 ... seconds up to the 10-minute cap."""
    b = Backoff(jitter=0)
    assert [b.delay(a) for a in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert b.delay(50) == 600


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"cap": -2}])
def test_bad_backoff_settings_are_refused(kwargs: dict[str, float]) -> None:
    """A backoff that could go negative or shrink is refused."""
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


def test_a_registry_is_built_from_the_modules_that_mark_handlers() -> None:
    """Registry.from_modules finds every @handler in a package and its submodules, whoever imported
    them first; its queue_specs are the catalog's plain data (model, summary, steps, job rows)."""
    first = Registry.from_modules(["handlers"])
    again = Registry.from_modules(["handlers"])  # the modules are imported already: the same registry
    assert first.queues() == again.queues()
    assert {"text_stats", "text_report", "language_page"} <= set(first.queues())
    specs = {spec.queue: spec for spec in first.queue_specs()}
    report = first.get("text_report")
    assert specs["text_report"].model is report.model is not None
    assert specs["language_page"].steps == first.get("language_page").steps != ()
    assert specs["text_report"].summary == report.summary != ""
    assert all(spec.job_rows == first.get(spec.queue).job_rows for spec in specs.values())
    assert Registry.from_modules(["tests.support.values"]).queues() == []  # a module without handlers


def test_keeps_job_rows_is_the_handlers_choice_and_true_for_other_queues() -> None:
    """Whether a queue's messages come with job rows, decided in one place."""
    reg = Registry()

    @handler("plain_one", registry=reg, job_rows=False)
    async def plain(payload: dict[str, Any], ctx: Context) -> None:
        return None

    @handler("rowed_one", registry=reg)
    async def rowed(payload: dict[str, Any], ctx: Context) -> None:
        return None

    assert (reg.keeps_job_rows("plain_one"), reg.keeps_job_rows("rowed_one")) == (False, True)
    assert reg.keeps_job_rows("served_elsewhere") is True
