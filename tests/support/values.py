"""Hypothesis strategies for what a user may hand us to store, and how to judge a round trip.

Shared by the encoder's own tests (tests/unit/test_storable.py) and the boundary tests that store
through a real database (tests/integration/test_storage_boundaries.py).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from db.storable import MAX_DEPTH

# The whole of Unicode: surrogates (category Cs) and NUL included, which st.text() leaves out.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
# Mostly characters a value really holds, with the awkward ones often enough to matter.
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=12),
    st.text(st.sampled_from("a\x00\ud800\udfff\U0001f600\u00e9\\\"'\n"), max_size=6),
    st.text(max_size=12),
)
ODD_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 1e16, 1e-7, 2.0**53 + 1]),
)
ODD_INTS = st.one_of(
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**40, -(10**40)]),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), ODD_INTS, ODD_FLOATS, TEXT)


def json_like(scalars: st.SearchStrategy[Any] = JSON_SCALARS) -> st.SearchStrategy[Any]:
    """Nested lists and dicts (string keys, some of them bad) of `scalars`."""
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
        max_leaves=12,
    )


class Colour(enum.Enum):
    """An enum: stored as its value."""

    RED = "red"
    TWO = 2


@dataclasses.dataclass
class Point:
    """A dataclass: stored as an object of its fields."""

    x: Any
    y: Any


class Page(BaseModel):
    """A pydantic model: stored as model_dump(mode="json")."""

    number: int
    text: str


class Opaque:
    """A type the encoder does not know: refused, never written as its repr."""


NON_JSON = st.one_of(
    st.binary(max_size=4),
    st.binary(max_size=4).map(bytearray),
    st.binary(max_size=4).map(memoryview),
    st.datetimes(),  # naive
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.tuples(st.integers(), TEXT),
    st.sampled_from(list(Colour)),
    st.builds(Point, JSON_SCALARS, JSON_SCALARS),
    st.builds(Page, number=st.integers(-5, 5), text=TEXT),
    st.builds(Opaque),
)
# Keys that are not strings: JSON has none, so they are refused rather than guessed at.
ODD_KEYS = st.one_of(st.integers(), st.booleans(), st.none(), st.floats(), st.tuples(st.integers()))


def anything() -> st.SearchStrategy[Any]:
    """Whatever a handler might return: JSON-like values, other Python types, odd keys."""
    return st.recursive(
        st.one_of(JSON_SCALARS, NON_JSON),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(TEXT, inner, max_size=4),
            st.dictionaries(st.one_of(TEXT, ODD_KEYS), inner, max_size=3),
        ),
        max_leaves=12,
    )


def nested(depth: int, leaf: Any = 0) -> Any:
    """`depth` levels of arrays and objects around `leaf`."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


TOO_DEEP = nested(MAX_DEPTH + 1)


def same(stored: Any, expected: Any) -> bool:
    """Equal as read back from jsonb: numbers by value as floats (jsonb keeps numeric: 1e16 comes
    back as the integer 10000000000000000, -0.0 as 0), everything else exactly."""
    if isinstance(expected, bool) or isinstance(stored, bool):
        return type(stored) is type(expected) and stored == expected
    if isinstance(expected, int | float) and isinstance(stored, int | float):
        if isinstance(expected, int) and isinstance(stored, int):
            return stored == expected
        return float(stored) == float(expected)
    if isinstance(expected, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == expected.keys()
            and all(same(stored[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(expected)
            and all(same(a, b) for a, b in zip(stored, expected, strict=True))
        )
    return type(stored) is type(expected) and stored == expected


def typed(value: Any) -> Any:
    """The value with each scalar's type beside it: 1 and 1.0 (and -0.0 and 0.0) differ here."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


# Number literals as the database may return them: any integer (past 64 bits too, which orjson
# alone reads as floats), any double, and the edges of both.
NUMBER_LITERALS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "1e400",
            "-1e400",
            "1e-400",
            "-0",
            "-0.0",
            "1E2",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "0.12345678901234567890123",
            "12345678901234567890.5",
        ]
    ),
)
JSON_TEXT = st.recursive(
    st.one_of(NUMBER_LITERALS, st.sampled_from(["true", "false", "null"]), st.text(ANY_CHAR).map(json.dumps)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=5), inner, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=12,
)
