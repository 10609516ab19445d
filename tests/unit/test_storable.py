"""The storage rule itself (db.storable), without a database: what is refused, how the rest is encoded."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import unicodedata
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from db import storable
from db.storable import MAX_DEPTH, InvalidJson, Unstorable
from tests.support.values import (
    ANY_CHAR,
    JSON_TEXT,
    TOO_DEEP,
    Colour,
    Opaque,
    Page,
    Point,
    anything,
    json_like,
    nested,
    typed,
)

SURROGATES = range(0xD800, 0xE000)


def refused_text(text: str) -> bool:
    """What a Postgres text or jsonb value cannot hold: NUL, lone surrogates."""
    return "\x00" in text or any(ord(c) in SURROGATES for c in text)


def refused_json(value: Any, depth: int = 0) -> bool:
    """The rule for JSON-like values, written out independently of the encoder."""
    if isinstance(value, str):
        return refused_text(value)
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return depth >= MAX_DEPTH or any(refused_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth >= MAX_DEPTH or any(
            refused_text(k) or refused_json(v, depth + 1) for k, v in value.items()
        )
    return False


def contents(value: Any) -> Any:
    """A container as the encoder walks it (models, dataclasses, tuples and sets opened up)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, enum.Enum):
        return contents(value.value)
    return value


def locally_bad(value: Any, path: tuple[str | int, ...]) -> bool:
    """The element the error points at breaks the rule there (not somewhere else)."""
    parent, here = None, contents(value)
    for segment in path:
        parent, here = here, contents(here[segment])
    if path and isinstance(parent, dict) and isinstance(path[-1], str) and refused_text(path[-1]):
        return True  # the key itself
    if isinstance(here, str):
        return refused_text(here)
    if isinstance(here, float):
        return not math.isfinite(here)
    if isinstance(here, dict):
        return any(not isinstance(k, str) for k in here) or len(path) >= MAX_DEPTH
    if isinstance(here, list):
        return len(path) >= MAX_DEPTH
    return isinstance(here, bytes | bytearray | memoryview | Opaque)


def attempt(value: Any) -> tuple[str | None, Unstorable | None]:
    """(the JSON text, None) or (None, the refusal)."""
    try:
        return storable.dumps(value), None
    except Unstorable as exc:
        return None, exc


@settings(max_examples=400)
@given(json_like())
def test_json_values_are_refused_exactly_when_the_rule_says_and_round_trip_otherwise(value: Any) -> None:
    """A JSON-like value is refused iff it holds NUL, a lone surrogate, NaN or Infinity (in a
    string or a key), and otherwise reads back equal, from UTF-8 text without a \\u0000 escape."""
    text, exc = attempt(value)
    if exc is not None:
        assert refused_json(value), f"refused {value!r}: {exc}"
        assert locally_bad(value, exc.path), (value, exc.path, exc.reason)
        return
    assert text is not None
    assert not refused_json(value), f"accepted {value!r}"
    assert json.loads(text) == value
    assert storable.jsonable(value) is value  # JSON types come back as they are: no copy
    text.encode()  # valid UTF-8 (a lone surrogate would raise)
    assert "\\u0000" not in text.replace("\\\\", "")


@settings(max_examples=400)
@given(anything())
def test_any_value_is_refused_at_a_named_path_or_encoded_as_pydantic_json_mode_does(value: Any) -> None:
    """Other Python types: refused where the rule says (bytes, unknown types, non-string keys, as
    well as the JSON rule), the error pointing at the offending element; else the same JSON as
    pydantic's JSON mode, never a repr()."""
    text, exc = attempt(value)
    if exc is not None:
        assert locally_bad(value, exc.path), (value, exc.path, exc.reason)
        assert exc.describe().startswith("$")
        return
    assert text is not None
    assert json.loads(text) == json.loads(pydantic_core.to_json(value))
    assert json.loads(text) == storable.jsonable(value)
    assert "object at 0x" not in text


def test_the_encodings() -> None:
    """Datetimes ISO 8601 with their offset (UTC as Z; a naive one without), dates, times and
    durations ISO 8601, UUIDs and Decimals as strings, tuples and sets as arrays."""
    value = {
        "aware": datetime(2026, 12, 1, 21, 46, 47, 823226, tzinfo=UTC),
        "offset": datetime(2026, 12, 1, 21, 46, tzinfo=timezone(timedelta(hours=2))),
        "naive": datetime(2026, 12, 1, 21, 46, 47, 823226),
        "date": date(2026, 12, 1),
        "time": time(21, 46),
        "duration": timedelta(hours=1, seconds=30),
        "uuid": UUID(int=1),
        "decimal": Decimal("1.10"),
        "tuple": (1, "a"),
        "set": {3},
        "enum": [Colour.RED],
        "model": Page(number=1, text="p"),
        "dataclass": Point(1, None),
        "big": 10**40,
    }
    assert json.loads(storable.dumps(value)) == {
        "aware": "2026-12-01T21:46:47.823226Z",
        "offset": "2026-12-01T21:46:00+02:00",
        "naive": "2026-12-01T21:46:47.823226",
        "date": "2026-12-01",
        "time": "21:46:00",
        "duration": "PT1H30S",
        "uuid": "00000000-0000-0000-0000-000000000001",
        "decimal": "1.10",
        "tuple": [1, "a"],
        "set": [3],
        "enum": ["red"],
        "model": {"number": 1, "text": "p"},
        "dataclass": {"x": 1, "y": None},
        "big": 10**40,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"pages": [{}, {}, {}, {"text": "scanned\x00page"}]}, "$.pages[3].text: contains NUL (U+0000)"),
        (
            {"blob": b"\x00\x01"},
            "$.blob: bytes are not JSON: encode them (base64) or store the file with ctx.artifact",
        ),
        ({"x": bytearray(b"a")}, "$.x: bytes are not JSON"),
        ({"score": float("nan")}, "$.score: NaN is not JSON"),
        ([float("-inf")], "$[0]: -Infinity is not JSON"),
        ({1: "a"}, "$: key 1 (int) is not a string"),
        ({"s": "\ud800"}, "$.s: contains a lone surrogate (U+D800)"),
        ({"a b": {"k\x00": 1}}, '$["a b"]["k\\u0000"]: the key contains NUL'),
        ({"o": Opaque()}, "$.o: Opaque is not a JSON type"),
        ({"i": 10**5000}, "$.i: an integer of more than 4300 digits"),
        (TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels"),
    ],
)
def test_refusals_name_the_path_and_the_reason(value: Any, message: str) -> None:
    """The error is one ValueError subclass whose message starts with the path, then the reason."""
    with pytest.raises(Unstorable) as caught:
        storable.dumps(value)
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)
    str(caught.value).encode("ascii")  # the message itself is printable anywhere


def test_nesting_up_to_the_limit_is_stored_and_a_value_that_contains_itself_is_refused() -> None:
    """MAX_DEPTH levels are fine; one more, or a cycle, is refused (not a RecursionError)."""
    assert json.loads(storable.dumps(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(Unstorable, match="deeper than"):
        storable.dumps(cycle)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(Unstorable, match="deeper than"):
        storable.jsonable(loop)


def test_a_model_is_checked_after_pydantic_dumps_it() -> None:
    """A model's str field may hold a NUL: pydantic writes it as \\u0000, which jsonb refuses."""
    with pytest.raises(Unstorable, match=r"\$\.text: contains NUL"):
        storable.dumps(Page(number=1, text="a\x00b"))


@settings(max_examples=300)
@given(st.text(ANY_CHAR))
def test_safe_text_always_gives_storable_text_and_keeps_storable_text_as_it_is(text: str) -> None:
    """Error text is sanitised, not refused: NUL and lone surrogates become visible escapes."""
    safe = storable.safe_text(text)
    assert storable.check_text(safe) == safe
    if not refused_text(text):
        assert safe == text
    else:
        with pytest.raises(Unstorable):
            storable.check_text(text)


@settings(max_examples=300)
@given(st.text(ANY_CHAR, max_size=300), st.integers(0, 200))
def test_bounded_safe_text_fits_its_limit_and_marks_a_cut(text: str, limit: int) -> None:
    """With a limit: storable, at most `limit` characters; unchanged when it fits, else a prefix of
    the unbounded form cut short with an ellipsis."""
    bounded, whole = storable.safe_text(text, limit), storable.safe_text(text)
    assert storable.check_text(bounded) == bounded
    assert len(bounded) <= limit
    if len(whole) <= limit and len(text) <= limit:
        assert bounded == whole
    elif limit:
        assert bounded.endswith("\u2026") and whole.startswith(bounded[:-1])


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(ANY_CHAR, max_size=40),
        json_like().map(lambda v: json.dumps(v, allow_nan=True)),
        st.integers(1, 200_000).map(lambda n: "[" * n),
        st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    )
)
def test_loads_reads_json_or_says_it_is_not_json_never_anything_else(data: bytes | str) -> None:
    """Text from outside parses, or raises InvalidJson: no RecursionError, no NaN let through."""
    try:
        value = storable.loads(data)
    except InvalidJson:
        return
    json.dumps(value, allow_nan=False)  # raises ValueError for a NaN or an Infinity let through


@pytest.mark.parametrize("text", ["[" * 1000, "[" * 100_000, "[" * 5000 + "]" * 5000, "[NaN]", "[1e400]"])
def test_loads_refuses_deep_and_non_json_bodies(text: str) -> None:
    """Deep nesting, NaN and numbers past a double are not JSON we read (400, not 500)."""
    if text == "[1e400]":  # a double's overflow: Python reads it as inf, which is refused where stored
        with pytest.raises(Unstorable, match="Infinity"):
            storable.dumps(storable.loads(text))
        return
    with pytest.raises(InvalidJson):
        storable.loads(text)


def test_the_fast_path_agrees_with_orjson_where_orjson_is_right() -> None:
    """orjson writes NaN as null and NUL as \\u0000; the walk refuses both before orjson runs."""
    assert orjson.dumps(float("nan")) == b"null"
    assert orjson.dumps("\x00") == b'"\\u0000"'
    with pytest.raises(Unstorable):
        storable.dumps(float("nan"))
    with pytest.raises(Unstorable):
        storable.dumps("\x00")
    small = {"id": 7, "name": "ok", "n": None}
    assert storable.dumps(small).encode() == orjson.dumps(small)


@given(st.text())
def test_escape_controls_leaves_no_control_character_and_loses_nothing(text: str) -> None:
    """Every C0, DEL and C1 character becomes `\\xNN`; everything else is kept, so escaping a
    backslash-free text can be undone."""
    shown = storable.escape_controls(text)
    assert not any(unicodedata.category(c) == "Cc" for c in shown)
    if "\\" not in text:
        assert re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), shown) == text


@settings(max_examples=300)
@given(st.one_of(JSON_TEXT, st.integers(1, 700).map(lambda n: "[" * n + "]" * n)))
def test_read_jsonb_reads_what_the_stdlib_reads(text: str) -> None:
    """The rows' loader gives exactly json.loads' value, types included, or fails as it does."""
    data = text.encode()
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            storable.read_jsonb(data)
        return
    assert typed(storable.read_jsonb(data)) == typed(expected)


@pytest.mark.parametrize("depth", [900, 1024, 1025, 5000])
def test_read_jsonb_reads_deep_nesting_or_fails_as_the_stdlib_does(depth: int) -> None:
    """To orjson's 1,024 levels it reads what the stdlib's recursion may give up on; past them the
    stdlib reads it, or fails as it always did."""
    data = ("[" * depth + "]" * depth).encode()
    try:
        got = storable.read_jsonb(data)
    except RecursionError:
        assert depth > 1024
        with pytest.raises(RecursionError):
            json.loads(data)
        return
    for _ in range(depth - 1):
        assert len(got) == 1
        got = got[0]
    assert got == []
