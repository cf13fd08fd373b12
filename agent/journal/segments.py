"""Segment files on disk: naming, listing, and reading lines with their byte offsets.

This is the IO side of verification and of ``tail``; ``verify.py`` never touches files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from agent.errors import JournalError

_SEGMENT_RE = re.compile(r"^seg-([0-9]{6,})\.jsonl$")


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.jsonl"


def segment_number(name: str) -> int | None:
    match = _SEGMENT_RE.match(name)
    return int(match.group(1)) if match else None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files of ``directory`` ordered by number."""
    try:
        names = [p for p in Path(directory).iterdir() if p.is_file()]
    except FileNotFoundError:
        raise JournalError(f"journal directory {directory} does not exist") from None
    except OSError as exc:
        raise JournalError(f"cannot list {directory}: {exc.strerror}") from None
    found = [(n, p) for p in names if (n := segment_number(p.name)) is not None]
    return sorted(found)


class Line(NamedTuple):
    """One stored line: ``data`` excludes the newline; ``complete`` says a newline ended it.

    A NamedTuple rather than a frozen dataclass: it is created once per record on the verify
    hot path, where a frozen dataclass costs three times as much.
    """

    segment: str
    offset: int
    data: bytes
    complete: bool = True


def split_lines(segment: str, content: bytes, base: int = 0) -> Iterator[Line]:
    pos = 0
    end = len(content)
    find = content.find
    while pos < end:
        nl = find(b"\n", pos)
        if nl < 0:
            yield Line(segment, base + pos, content[pos:], False)
            return
        yield Line(segment, base + pos, content[pos:nl])
        pos = nl + 1


def read_segment(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None


def iter_lines(directory: Path) -> Iterator[Line]:
    """Every line of every segment, in order."""
    for _, path in list_segments(directory):
        yield from split_lines(path.name, read_segment(path))
