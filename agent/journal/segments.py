"""Segment files on disk: naming, listing, and reading lines with their byte offsets.

This is the IO side of verification and of ``tail``; ``verify.py`` never touches files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from agent.errors import JournalError
from agent.journal import protect

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


class Chunk(NamedTuple):
    """A run of stored lines from a source: ``data`` starts at byte ``offset`` of ``segment``.

    The unit a verifier is fed: a whole segment file read from disk, or a batch of lines a
    collector received (whose segment id is then the sender's segment name).
    """

    segment: str
    offset: int
    data: bytes


class SegmentProblem(NamedTuple):
    message: str
    #: The finding names the seq expected next (the numbering hides records).
    names_seq: bool
    #: The finding points at the segment's first line.
    at_line: bool


class SegmentNumbering:
    """The file layer's check that segment files are named and numbered without a hole.

    ``check`` is called with each new segment id in the order the lines come.
    """

    def __init__(self) -> None:
        self._last = 0

    def check(self, name: str) -> SegmentProblem | None:
        number = segment_number(name)
        if number is None:
            return SegmentProblem("not a segment file name", names_seq=False, at_line=False)
        last, self._last = self._last, number
        if number == last + 1:
            return None
        if number > last + 1:
            missing = ", ".join(segment_name(n) for n in range(last + 1, min(number, last + 4)))
            return SegmentProblem(
                f"segment file(s) missing before it: {missing}", names_seq=True, at_line=True
            )
        return SegmentProblem("segment out of order", names_seq=True, at_line=False)


def journal_chunks(segments: list[tuple[int, Path]]) -> Iterator[Chunk]:
    """The source of a journal directory: one chunk per segment file, in order."""
    for _, path in segments:
        yield Chunk(path.name, 0, read_segment(path))


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


def live_segment(segments: list[tuple[int, Path]]) -> int:
    """Number of the segment records are appended to: the last one while it can be appended
    to, else the next (the last was sealed, FS_IMMUTABLE_FL: a crash between sealing it and
    creating the next); 1 for an empty journal. Every segment before it is sealed."""
    if not segments:
        return 1
    number, path = segments[-1]
    return number + 1 if protect.get_flags(path) & protect.FS_IMMUTABLE_FL else number
