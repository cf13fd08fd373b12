"""Canonical JSON (RFC 8785, "JCS") for the value domain journal records use.

Records only hold strings, booleans, null, integers within +-(2**53 - 1), lists and objects
(no floats: RFC 8785 number formatting is the one costly, subtle part, and records need none).
For that domain RFC 8785 output is exactly what ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` produces, except for the order of object keys holding
characters above U+FFFF (RFC 8785 sorts by UTF-16 code units, Python by code points); such
objects are handed to the ``rfc8785`` library itself.

Why not always call ``rfc8785.dumps``: it is pure Python and measured 58 k records/s here, which
alone would cap the writer below the 100 k records/s target; the stdlib C encoder does 230 k/s.
``tests/unit/journal/test_canonical.py`` proves byte equality with ``rfc8785`` on many random
inputs, and the verifier rejects every line that is not byte-identical to this encoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TypeAlias

import rfc8785

from agent.errors import FormatError

JsonValue: TypeAlias = "str | int | bool | list[JsonValue] | dict[str, JsonValue] | None"

MAX_SAFE_INT = 2**53 - 1

_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


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


def canonical(value: JsonValue) -> bytes:
    """Return the RFC 8785 encoding of ``value``; raise FormatError outside the record domain."""
    try:
        if _needs_rfc8785_sort(value):
            return rfc8785.dumps(value)
        return _encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FormatError(f"string is not valid Unicode (lone surrogate): {exc}") from exc
    except RecursionError as exc:
        raise FormatError("value is nested too deeply") from exc
