"""TOML parsing with positions: ``tomllib`` for the values, a small locator for line:column.

Why hand-written: ``tomllib`` reports positions for syntax errors only, and no TOML library in
the standard library or in our dependencies keeps the position of each key and value. The
locator runs only on text ``tomllib`` has already accepted, so it can be lenient: it walks the
source once and records, for every key path (``("rules", 3, "targets", "paths", 1)``), where the
key and its value start. Errors then point at the exact token a person has to change.

Hostile input is refused before it reaches anything recursive: text that is not UTF-8 (with the
position of the first bad byte), nesting deeper than the language can use (``tomllib`` and the
locator both recurse per level), integers too long to print in a message.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.errors import PolicyFieldError

FieldPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SYNTAX_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_AT_END = "(at end of document)"

#: Deepest nesting of arrays and tables a document may have. The language needs 5 (rules[i]
#: .subjects.except.exe[j]); tomllib itself recurses per level and fails near 450.
MAX_DEPTH = 32
#: Integers beyond this many bits cannot be any value of the language (ids and ports are 32-bit)
#: and Python refuses to print integers of more than 4300 digits in an error message.
MAX_INT_BITS = 64
_TOO_DEEP = (
    f"nested more than {MAX_DEPTH} levels deep (arrays and tables): the policy language needs "
    "at most 5"
)
_TOO_LARGE = f"integer too large: at most {MAX_INT_BITS} bits (ids and ports are 32-bit)"


def field_text(path: FieldPath) -> str:
    """``("rules", 3, "targets", "paths", 1)`` -> ``rules[3].targets.paths[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True)
class Position:
    line: int
    column: int


class Locator:
    """Key path -> position of the key and of its value, for one TOML document."""

    def __init__(self, text: str) -> None:
        self.keys: dict[FieldPath, Position] = {}
        self.values: dict[FieldPath, Position] = {}
        _Walker(text, self).run()

    def locate(self, path: FieldPath, *, at_key: bool = False) -> Position | None:
        """Where ``path`` is written, or its nearest written ancestor (e.g. a defaulted key)."""
        table = self.keys if at_key else self.values
        for end in range(len(path), 0, -1):
            found = table.get(path[:end]) or self.keys.get(path[:end])
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class Document:
    """A parsed TOML file: its values and where each one is written."""

    file: str
    data: dict[str, Any]
    locator: Locator

    def position(self, error: PolicyFieldError) -> Position | None:
        return self.locator.locate(error.field, at_key=error.at_key)


class TomlError(Exception):
    """The text is not a TOML document this module accepts: where (when known) and why."""

    def __init__(self, message: str, position: Position | None, field: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.field = field


def parse_document(file: str, raw: bytes) -> Document:
    """Parse the bytes of ``file`` (the name shown in findings). Raises TomlError."""
    text = _decode(raw)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text) from None
    except RecursionError:
        raise TomlError(_TOO_DEEP, None) from None
    except ValueError:  # int()'s 4300-digit limit, which tomllib lets through
        raise TomlError(_TOO_LARGE, None) from None
    _check_shape(data, text)
    return Document(file, data, Locator(text))


def _decode(raw: bytes) -> str:
    """UTF-8, as TOML requires, without a byte order mark; nothing replaced silently (a
    replaced byte in a path would make a rule name another file)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TomlError("UTF-16 or UTF-32 text (byte order mark): TOML files are UTF-8", None)
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        message = f"byte {raw[exc.start]:#04x} is not UTF-8 ({exc.reason}): TOML files are UTF-8"
        raise TomlError(message, _end(raw[: exc.start].decode("utf-8"))) from None


def _end(text: str) -> Position:
    """The position just past the last character of ``text``."""
    return Position(text.count("\n") + 1, len(text) - text.rfind("\n"))


def _syntax_error(message: str, text: str) -> TomlError:
    found = _SYNTAX_AT.search(message)
    if found:
        position = Position(int(found[1]), int(found[2]))
        return TomlError("TOML: " + _SYNTAX_AT.sub("", message).strip(), position)
    if _AT_END in message:  # tomllib gives no line and column for this one
        message = message.replace(_AT_END, "").strip() + " at the end of the file"
        return TomlError("TOML: " + message, _end(text))
    return TomlError("TOML: " + message, None)


def _check_shape(data: dict[str, Any], text: str) -> None:
    """Depth first, then integer size, without recursion: the locator recurses per level, so it
    runs only on a document of bounded depth."""
    too_long: FieldPath | None = None
    stack: list[tuple[FieldPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict | list):
            if len(path) >= MAX_DEPTH:
                raise TomlError(_TOO_DEEP, None, path[:1])
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend(((*path, key), item) for key, item in items)
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS and too_long is None:
            too_long = path
    if too_long is not None:
        raise TomlError(_TOO_LARGE, Locator(text).locate(too_long), too_long)


class _Walker:
    """One pass over accepted TOML text, recording positions into a Locator."""

    def __init__(self, text: str, locator: Locator) -> None:
        self.text = text
        self.i = 0
        self.out = locator
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.array_counts: dict[FieldPath, int] = {}  # arrays of tables: elements seen

    def pos(self, index: int) -> Position:
        line = bisect.bisect_right(self.line_starts, index)
        return Position(line, index - self.line_starts[line - 1] + 1)

    def peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def run(self) -> None:
        table: FieldPath = ()
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)

    def header(self) -> FieldPath:
        start = self.i
        is_array = self.peek(2) == "[["
        self.i += 2 if is_array else 1
        names = [name for name, _ in self.key()]
        self.i += 2 if is_array else 1
        path = (*self.resolve(names[:-1]), names[-1])
        if path in self.array_counts and not is_array:
            path = (*path, self.array_counts[path] - 1)
        if is_array:
            index = self.array_counts.get(path, 0)
            self.array_counts[path] = index + 1
            path = (*path, index)
        self.out.keys.setdefault(path, self.pos(start))
        self.out.values.setdefault(path, self.pos(start))
        return path

    def resolve(self, names: list[str]) -> FieldPath:
        """Header names -> key path, entering the latest element of each array of tables."""
        path: FieldPath = ()
        for name in names:
            path = (*path, name)
            if path in self.array_counts:
                path = (*path, self.array_counts[path] - 1)
        return path

    def key(self) -> list[tuple[str, int]]:
        parts = []
        while True:
            self.skip_space(newlines=False)
            start = self.i
            if self.peek() in ('"', "'"):
                raw = self.skip_string()
                name = tomllib.loads(f"k = {raw}")["k"]
            else:
                found = _BARE.match(self.text, self.i)
                name = found.group() if found else ""
                self.i = found.end() if found else self.i + 1
            parts.append((name, start))
            self.skip_space(newlines=False)
            if self.peek() != ".":
                return parts
            self.i += 1

    def key_value(self, table: FieldPath) -> None:
        path = table
        for name, start in self.key():
            path = (*path, name)
            self.out.keys.setdefault(path, self.pos(start))
        self.i += 1  # "="
        self.value(path)

    def value(self, path: FieldPath) -> None:
        self.skip_space(newlines=False)
        self.out.values.setdefault(path, self.pos(self.i))
        c = self.peek()
        if c == "[":
            self.i += 1
            for index in self.items("]"):
                self.value((*path, index))
        elif c == "{":
            self.i += 1
            for _ in self.items("}"):
                self.key_value(path)
        elif c in ('"', "'"):
            self.skip_string()
        else:
            while self.i < len(self.text) and self.text[self.i] not in ",]}\n#":
                self.i += 1

    def items(self, close: str) -> Iterator[int]:
        """Yield once per element of an array or inline table; consume the closing bracket."""
        index = 0
        while True:
            self.skip_space(newlines=True)
            if self.peek() == ",":
                self.i += 1
                continue
            if self.peek() == close or self.i >= len(self.text):
                self.i += 1
                return
            yield index
            index += 1

    def skip_string(self) -> str:
        start = self.i
        quote = self.peek()
        triple = self.peek(3) == quote * 3
        self.i += 3 if triple else 1
        end_mark = quote * 3 if triple else quote
        while self.i < len(self.text):
            if quote == '"' and self.text[self.i] == "\\":
                self.i += 2
                continue
            if self.text.startswith(end_mark, self.i):
                self.i += len(end_mark)
                # a multi-line string may end in up to two extra quotes ("""a""""")
                while triple and self.peek() == quote:
                    self.i += 1
                break
            self.i += 1
        return self.text[start : self.i]
