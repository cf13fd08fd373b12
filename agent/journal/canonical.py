"""Canonical JSON (RFC 8785, "JCS") for the value domain journal records use.

Records only hold strings, booleans, null, integers within +-(2**53 - 1), lists and objects
(no floats: RFC 8785 number formatting is the one costly, subtle part, and records need none).
For that domain RFC 8785 output is exactly what ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` produces, except for the order of object keys holding
characters above U+FFFF (RFC 8785 sorts by UTF-16 code units, Python by code points); such
objects are handed to the ``rfc8785`` library itself. ``orjson`` with OPT_SORT_KEYS produces
that same encoding (compact, sorted keys, UTF-8, the same string escapes), five times faster than
the stdlib encoder.

Why not always call ``rfc8785.dumps``: it is pure Python; on the realistic record mix of
bench/journal_bench.py it encodes ~50 k records/s, the stdlib C encoder ~107 k/s and orjson
~590 k/s, and canonical encoding is on the hot path of both the writer and the verifier.
``tests/unit/journal/test_canonical.py`` proves byte equality with ``rfc8785`` on many random
inputs, and the verifier rejects every line that is not byte-identical to this encoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeAlias

import orjson
import rfc8785

from agent.errors import FormatError

JsonValue: TypeAlias = "str | int | bool | list[JsonValue] | dict[str, JsonValue] | None"

MAX_SAFE_INT = 2**53 - 1

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def _needs_rfc8785_sort(value: object) -> bool:
    """Check the value domain; True if some object key sorts differently in UTF-16.

    Scalars are handled inline in the loops: this runs for every record written and verified.
    """
    kind = type(value)
    if kind is dict:
        items: Iterable[tuple[object, object]] = value.items()  # type: ignore[attr-defined]
    elif kind is list:
        items = ((None, item) for item in value)  # type: ignore[attr-defined]
    else:
        return _needs_rfc8785_sort({"": value})
    odd = False
    for key, item in items:
        if key is not None:
            if type(key) is not str:
                raise FormatError(f"object key {key!r} is not a string")
            if not key.isascii() and max(key) > "\uffff":
                odd = True
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -MAX_SAFE_INT <= item <= MAX_SAFE_INT:  # type: ignore[operator]
                continue
            raise FormatError(f"integer {item} is outside the safe range +-(2**53 - 1)")
        if kind is dict or kind is list:
            odd = _needs_rfc8785_sort(item) or odd
            continue
        raise FormatError(f"value of type {kind.__name__} is not allowed in a record")
    return odd


def _plain(value: dict[str, JsonValue] | list[JsonValue]) -> bool:
    """True if every value inside is a str, int, bool, None, dict or list (no float, no tuple)."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if (kind is dict or kind is list) and _plain(item):  # type: ignore[arg-type]
            continue
        return False
    return True


def canonical(value: JsonValue) -> bytes:
    """Return the RFC 8785 encoding of ``value``; raise FormatError outside the record domain.

    Fast path for the common case, an object of plain values whose encoding is ASCII: orjson
    itself enforces string keys and the 2**53 integer limit (OPT_STRICT_INTEGER), and ASCII
    keys sort the same by code point and by UTF-16 unit. Everything else takes ``_exact``.
    """
    try:
        if type(value) is dict and _plain(value):
            try:
                out = orjson.dumps(value, option=_OPTIONS)
            except orjson.JSONEncodeError:
                pass
            else:
                if out.isascii():
                    return out
    except RecursionError:
        raise FormatError("value is nested too deeply") from None
    return _exact(value)


def load_json(data: str | bytes) -> Any:
    """``json.loads`` for input from anyone: FormatError for anything that is not JSON text.

    Deep nesting makes the stdlib parser raise RecursionError, which is no ValueError: a
    hostile document must read as malformed, never escape as a traceback.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise FormatError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise FormatError(f"not valid JSON: {exc}") from None


def parse_canonical(data: bytes) -> dict[str, JsonValue]:
    """Parse one stored line; raise FormatError unless it is exactly canonical bytes."""
    try:
        parsed = _decode(data.decode("utf-8"))
    except FormatError:
        raise
    except RecursionError:  # deep nesting: hostile input, not a record
        raise FormatError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise FormatError(f"not valid JSON: {exc}") from None
    if type(parsed) is not dict:
        raise FormatError("not a JSON object")
    try:
        out = orjson.dumps(parsed, option=_OPTIONS)  # floats were refused while parsing
    except orjson.JSONEncodeError:
        out = b""
    if data.isascii():  # ASCII keys sort the same by code point and by UTF-16 unit
        canonical_bytes = out == data
    else:  # orjson sorts by code point: equal bytes are not enough above U+FFFF
        canonical_bytes = (out == data and not _needs_rfc8785_sort(parsed)) or (
            _exact(parsed) == data
        )
    if not canonical_bytes:
        raise FormatError("not canonical JSON (RFC 8785)")
    return parsed


def _no_float(text: str) -> JsonValue:
    raise FormatError(f"number {text} is not an integer (records hold no floats)")


_decode = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float).decode


def _exact(value: JsonValue) -> bytes:
    try:
        if _needs_rfc8785_sort(value):
            return rfc8785.dumps(value)
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise FormatError(f"cannot encode: {exc}") from None
    except RecursionError as exc:
        raise FormatError("value is nested too deeply") from exc
