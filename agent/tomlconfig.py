"""Configuration files in TOML (``agent.toml``, ``collector.toml``): checked values, and errors
that name the file, the line and the key.

A configuration class checks every value when it is made, with the helpers below; they raise
``FieldError`` with the key's dotted name (``timeouts.request_seconds``). ``parse`` reads a
file's bytes with the policy language's parser (tomllib behind a guard against text that is not
UTF-8, absurd nesting and integers too long to print), builds the configuration, and turns a
syntax error or a ``FieldError`` into one line: ``FILE: line N: [table] key: what is wrong``.
The line is found by the policy language's locator, which knows dotted keys and inline tables.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import SealtrailError
from agent.policy._toml import TomlError, parse_document

T = TypeVar("T")


class FieldError(Exception):
    """One value is wrong; ``key`` is its dotted name, ``message`` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# ------------------------------------------------------------------------------ checks
def number(key: str, value: object, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise FieldError(key, f"must be a number of at least {low:g}, not {value!r}")
    return float(value)


def integer(key: str, value: object, low: int) -> int:
    if type(value) is not int or value < low:
        raise FieldError(key, f"must be an integer of at least {low}, not {value!r}")
    return value


def string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise FieldError(key, f"must be a non-empty string, not {value!r}")
    return value


def table(value: object, name: str, known: set[str]) -> dict[str, Any]:
    """A table (``name``: its dotted name, "" for the top level) with no key but ``known``."""
    if not isinstance(value, dict):
        raise FieldError(name, "must be a table")
    unknown = sorted(set(value) - known)
    if unknown:
        prefix = f"{name}." if name else ""
        raise FieldError(
            prefix + unknown[0],
            f"is not a known key (known here: {', '.join(sorted(known))})",
        )
    return value


def field_names(cls: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------ reading
def toml_key(dotted: str) -> str:
    """A dotted name as a person finds it in the file: ``[timeouts] request_seconds``."""
    name, _, key = dotted.rpartition(".")
    return f"[{name}] {key}" if name else dotted


def parse(
    path: Path, raw: bytes, build: Callable[[dict[str, Any]], T], error: type[SealtrailError]
) -> T:
    """``build`` over the document in ``raw`` (read from ``path``); a syntax error or a
    ``FieldError`` of ``build`` raised as ``error`` naming ``path``, the line and the key."""
    try:
        document = parse_document(str(path), raw)
    except TomlError as exc:
        p = exc.position
        at = f" line {p.line}, column {p.column}:" if p else ""
        raise error(f"{path}:{at} {exc.message}") from None
    try:
        return build(document.data)
    except FieldError as exc:
        # a key left out (a required one, or one another needs) is placed at its table
        where = document.locator.locate(tuple(exc.key.split(".")))
        at = f" line {where.line}:" if where else ""
        raise error(f"{path}:{at} {toml_key(exc.key)}: {exc.message}") from None


# ------------------------------------------------------------------------------ writing
def quote(text: str) -> str:
    """A TOML basic string. Values are printable (checked), so JSON escapes only quote and
    backslash, the way TOML does."""
    return json.dumps(text, ensure_ascii=False)


def num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
