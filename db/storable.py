"""What may be stored: the one encoder for every JSON (and text) value we write to Postgres.

The rule (docs/reference/storable.md, "What may be stored"):

- Refused, with `Unstorable` naming the path (`$.pages[3].text`) and the reason:
  NUL (U+0000) anywhere, in strings and keys (Postgres text and jsonb cannot hold it); lone
  surrogates (U+D800-U+DFFF alone: not UTF-8); NaN and +-Infinity (not JSON); object keys that
  are not strings (JSON keys are strings: we do not guess how yours should read); `bytes`,
  `bytearray`, `memoryview` (base64 them, or store the file with `ctx.artifact`); integers of
  more than 4,300 digits (Python will not write them); nesting deeper than MAX_DEPTH; any other
  type (no silent str() or repr()).
- Encoded as pydantic's JSON mode does: datetimes ISO 8601 with their offset (UTC as `Z`; a naive
  datetime has no offset to give and is written without one), dates and times ISO 8601,
  timedeltas ISO 8601 durations, UUIDs and Decimals as strings, enums as their value, pydantic
  models via `model_dump(mode="json")` (then checked like the rest), dataclasses as objects of
  their fields; tuples, lists, sets and frozensets as arrays (a set in no particular order);
  subclasses of str, int, float, dict and list as their base type.

Error text is the one exception: an exception message may hold anything, and a dead letter must
always be writable, so `safe_text` makes text storable (NUL and lone surrogates written as
visible `\\u0000`-style escapes) instead of refusing it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import orjson
import pydantic_core
from psycopg.types.json import Jsonb
from pydantic import BaseModel

# Far above any real document and below every parser a value meets on its way: orjson's encoder
# (254 levels), Python's json decoder that reads rows back (its recursion limit, ~1,000), and
# PostgreSQL's jsonb parser (stack depth: some 10,000 levels at the default max_stack_depth of
# 2MB, fewer on a server with less). A value that refers to itself is refused here too.
MAX_DEPTH: Final = 128
MAX_INT_DIGITS: Final = 4300  # Python's default int <-> str limit (sys.get_int_max_str_digits)

_MIN_INT64: Final = -(2**63)
_MAX_UINT64: Final = 2**64 - 1
# A bound on bits that keeps str(int) under MAX_INT_DIGITS (log2(10) * 4300 = 14284.3).
_MAX_INT_BITS: Final = 14284
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN_KEY: Final = 40  # characters of a key shown in a path
_SHOWN_SEGMENTS: Final = 12
_BINARY: Final = "bytes are not JSON: encode them (base64) or store the file with ctx.artifact"

Segment = str | int


class Unstorable(ValueError):
    """A value that may not be stored: its path inside the value and why."""

    def __init__(self, reason: str, path: tuple[Segment, ...] = ()) -> None:
        self.reason = reason
        self.path = path
        super().__init__(reason)

    def at(self, root: str = "$") -> str:
        """The path from `root`: `$.pages[3].text` (keys that are not identifiers quoted: `$["a b"]`)."""
        parts = [_segment(s) for s in self.path]
        if len(parts) > _SHOWN_SEGMENTS:  # a value nested too deeply: its path would be as long
            parts = [*parts[: _SHOWN_SEGMENTS // 2], "...", *parts[-_SHOWN_SEGMENTS // 2 :]]
        return root + "".join(parts)

    def describe(self, root: str = "$") -> str:
        """`<path>: <reason>`, the message every boundary passes on."""
        return f"{self.at(root)}: {self.reason}"

    def __str__(self) -> str:
        return self.describe()


def _segment(segment: Segment) -> str:
    if isinstance(segment, int):
        return f"[{segment}]"
    if _IDENTIFIER.fullmatch(segment):
        return f".{segment}"
    shown = segment if len(segment) <= _SHOWN_KEY else segment[:_SHOWN_KEY] + "..."
    return f"[{json.dumps(shown)}]"  # ASCII: NUL and surrogates show as escapes


class InvalidJson(ValueError):
    """Text from outside (a request body, a CLI argument) that is not JSON we can read."""


def jsonable(value: Any) -> Any:
    """The value as JSON types (dict, list, str, int, float, bool, None); Unstorable if refused.

    Values that already are JSON types come back as they are (the same objects, not copies).
    """
    return _walk(value, 0)


def dumps(value: Any) -> str:
    """The value as compact JSON text, by the rule above; Unstorable if refused."""
    return _encode(_walk(value, 0)).decode()


def dumps_bytes(value: Any) -> bytes:
    """dumps, as UTF-8 bytes (for an HTTP body, or to measure a payload)."""
    return _encode(_walk(value, 0))


def jsonb(value: Any) -> Jsonb:
    """The value as a jsonb parameter, checked now (Unstorable before any statement is sent)."""
    return Jsonb(_walk(value, 0), dumps=_encode)


def check_text(text: str) -> str:
    """The text itself if a Postgres text column can hold it; Unstorable (path `$`) if not."""
    if "\x00" in text:
        raise Unstorable(_NUL)
    if not text.isascii():
        _check_utf8(text)
    return text


def safe_text(text: str, limit: int | None = None) -> str:
    """Text made storable rather than refused (error messages): NUL and lone surrogates escaped.

    With `limit`, at most that many characters: a longer text is cut and ends in an ellipsis.
    """
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]  # before escaping: a huge text is not walked whole
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if limit is not None and (cut or len(text) > limit):  # cut above, or escapes lengthened it
        text = text[: max(limit - 1, 0)] + _ELLIPSIS[:limit]
    return text


def escape_controls(text: str) -> str:
    """`text` with every control character (C0, DEL, C1) written as `\\xNN`: safe to print on a
    terminal or keep on one line, whatever a handler, a server or a user put in it."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def loads(data: bytes | str) -> Any:
    """Parse JSON from outside; InvalidJson for bad syntax or encoding, NaN/Infinity, too deep.

    Nesting deeper than MAX_DEPTH is refused before parsing, the same wherever it is called
    (a RecursionError would depend on how deep the caller's stack already is). The value still
    has to pass `jsonable` where it is stored (a `"\\u0000"` escape is valid JSON).
    """
    try:
        text = data if isinstance(data, str) else data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidJson(str(exc)) from None
    if _too_deep(text):
        raise InvalidJson(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # not expected after _too_deep; kept so it can never be a 500
        raise InvalidJson("nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, an int of too many digits
        raise InvalidJson(str(exc)) from None


def read_jsonb(data: str | bytes) -> Any:
    """A json or jsonb value as the database returned it, in Python: what `json.loads` reads.

    The loader of every connection we open (db.connect). orjson reads a payload in a tenth of the
    stdlib's time (a twentieth of a no-op worker's CPU per message), but it reads an integer past
    64 bits as a float and refuses what parses past a double's range or 1,024 levels deep, all of
    which jsonb holds: text with a run of 19 digits, or that orjson refuses, goes to `json.loads`.
    (Up to 1,024 levels orjson reads what the stdlib's recursion limit may give up on.)
    """
    if isinstance(data, str):  # psycopg hands bytes
        return json.loads(data)
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def _too_deep(text: str) -> bool:
    """Whether brackets outside strings nest deeper than MAX_DEPTH (cheap unless there are many)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


# -- how ---------------------------------------------------------------------------------------

_ELLIPSIS: Final = "\u2026"
_NUL: Final = "contains NUL (U+0000), which Postgres text and jsonb cannot hold"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET: Final = re.compile(r"[\[\]{}]")
# 19 digits in a row: an integer that may not fit 64 bits (or a float's long mantissa, read the same).
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        raise Unstorable(f"contains a lone surrogate (U+{char:04X}), which is not UTF-8") from None


def _encode(value: Any) -> bytes:
    """JSON bytes of a value _walk returned (JSON types only, every string checked)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer past 64 bits: the stdlib writes it (walked: no NaN)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _walk(value: Any, depth: int) -> Any:  # noqa: PLR0911  (one return per JSON type)
    cls = type(value)
    if cls is str:
        if "\x00" in value:
            raise Unstorable(_NUL)
        if not value.isascii():
            _check_utf8(value)
        return value
    if value is None or cls is bool:
        return value
    if cls is int:
        if (value < _MIN_INT64 or value > _MAX_UINT64) and value.bit_length() > _MAX_INT_BITS:
            raise Unstorable(f"an integer of more than {MAX_INT_DIGITS} digits")
        return value
    if cls is float:
        if not math.isfinite(value):
            name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            raise Unstorable(f"{name} is not JSON (a float JSON cannot hold)")
        return value
    if cls is dict:
        return _dict(value, depth)
    if cls is list:
        return _list(value, depth)
    return _other(value, depth)


def _dict(value: dict[Any, Any], depth: int) -> dict[str, Any]:
    if depth >= MAX_DEPTH:
        raise Unstorable(f"nested deeper than {MAX_DEPTH} levels (or the value contains itself)")
    out: dict[str, Any] | None = None
    for i, (key, item) in enumerate(value.items()):
        # The common member inline, without a call: an ASCII key to a short ASCII string, an
        # int, None or a bool (a batch of a thousand payloads is mostly these).
        if type(key) is str and key.isascii() and "\x00" not in key:
            cls = type(item)
            if (
                (cls is str and item.isascii() and "\x00" not in item)
                or item is None
                or cls is bool
                or (cls is int and _MIN_INT64 <= item <= _MAX_UINT64)
            ):
                if out is not None:
                    out[key] = item
                continue
        if type(key) is not str:
            key = _plain_key(key)  # noqa: PLW2901  a str subclass (StrEnum): its text
            if out is None:
                out = dict(list(value.items())[:i])
        try:
            _check_key(key)
            walked = _walk(item, depth + 1)
        except Unstorable as exc:
            exc.path = (key, *exc.path)
            raise
        if walked is not item and out is None:
            out = dict(list(value.items())[:i])
        if out is not None:
            out[key] = walked
    return value if out is None else out


def _plain_key(key: object) -> str:
    if not isinstance(key, str):
        shown = repr(key) if len(repr(key)) <= _SHOWN_KEY else repr(key)[:_SHOWN_KEY] + "..."
        reason = f"key {shown} ({type(key).__name__}) is not a string: JSON object keys are strings"
        raise Unstorable(reason)
    return str.__str__(key)


def _check_key(key: str) -> None:
    if "\x00" in key:
        raise Unstorable("the key " + _NUL)
    if not key.isascii():
        _check_utf8(key)


def _list(value: list[Any], depth: int) -> list[Any]:
    if depth >= MAX_DEPTH:
        raise Unstorable(f"nested deeper than {MAX_DEPTH} levels (or the value contains itself)")
    out: list[Any] | None = None
    for i, item in enumerate(value):
        try:
            walked = _walk(item, depth + 1)
        except Unstorable as exc:
            exc.path = (i, *exc.path)
            raise
        if walked is not item and out is None:
            out = value[:i]
        if out is not None:
            out.append(walked)
    return value if out is None else out


# Types pydantic's JSON mode writes as a string (or number), serialised by pydantic itself.
_PYDANTIC_SCALARS: Final = (datetime, date, time, timedelta, UUID, Decimal)


def _other(value: Any, depth: int) -> Any:  # noqa: PLR0911  (one return per kind of value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise Unstorable(_BINARY)
    if isinstance(value, enum.Enum):
        return _walk(value.value, depth)
    if isinstance(value, _PYDANTIC_SCALARS):
        return pydantic_core.to_jsonable_python(value)
    if isinstance(value, str):
        return _walk(str.__str__(value), depth)
    if isinstance(value, int):
        return _walk(int.__index__(value), depth)
    if isinstance(value, float):
        return _walk(float.__float__(value), depth)
    if isinstance(value, BaseModel):
        return _walk(value.model_dump(mode="json"), depth)
    if isinstance(value, dict):
        return _dict(dict(value), depth)
    if isinstance(value, list | tuple | set | frozenset):
        return _list(list(value), depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _dict(fields, depth)
    raise Unstorable(
        f"{type(value).__qualname__} is not a JSON type: convert it to a dict, list, str, int, "
        "float, bool or None first"
    )


__all__ = [
    "MAX_DEPTH",
    "InvalidJson",
    "Unstorable",
    "check_text",
    "dumps",
    "dumps_bytes",
    "jsonable",
    "jsonb",
    "loads",
    "safe_text",
]
