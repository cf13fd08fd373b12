"""Stored journal lines from a seq onward: what the forwarder sends. The journal is the spool.

Files are opened read-only and only ``pread``; nothing here writes, truncates, renames or
deletes journal data, so there is no second queue to repair or lose (DESIGN section 6).

``read(start, limit)`` returns the complete lines of records ``start`` .. at most
``limit - 1``, exactly as stored (each ending in ``\\n``), from one segment, bounded in bytes
and in records: memory is one batch whatever the backlog. A line still being written at the
end of the live segment is never returned. A batch ends at a seal, since the collector stores
a batch only up to its last seal (what follows is authenticated by nothing yet): it is cut
after the last seal within the bounds, or, with none there, read on to the next seal (the
writer seals every 8192 records, which may be more than a batch) up to ``MAX_BATCH_BYTES``.
Seal lines are told by their last bytes, without parsing every line: canonical JSON sorts the
keys, ``type`` sorts after every field of a seal, and ``,"type":"seal"}`` can end a line only
as its top-level type (a nested object would end in ``}}``, a string cannot hold a bare
quote). The segment holding ``start`` is found by a binary
search over the segments' first lines (their seqs), then a scan of that one segment; after a
batch, a cursor remembers where the next line starts, so reading on costs no scan. At the end
of a segment the next one is looked for: the writer finishes a segment (its final seal) before
it creates the next, so once the next exists, one more read of the old one sees all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from agent.errors import FormatError, JournalError
from agent.journal.record import Record, parse_line
from agent.journal.segments import list_segments, segment_name

DEFAULT_BATCH_BYTES = 1 << 20
DEFAULT_BATCH_RECORDS = 16384
#: The largest batch read to reach a seal, and the longest line: the collector's default body
#: limit (docs/collector.md).
MAX_BATCH_BYTES = 16 << 20
#: How every seal line ends: in canonical JSON (keys sorted) ``type`` is a seal's last key,
#: and a line ending so can be nothing else (module doc).
SEAL_END = b',"type":"seal"}'


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` stored lines of records ``start`` .. ``start + count - 1`` (``data``: each
    line with its newline), read at ``offset`` of ``segment``; ``first`` is the first record;
    ``sealed``: the last line is a seal (else no seal was found before the limit)."""

    start: int
    count: int
    data: bytes
    segment: str
    offset: int
    first: Record
    sealed: bool

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass
class _Cursor:
    seq: int  # the seq of the line starting at ``offset``
    number: int
    path: Path
    offset: int


class JournalSource:
    """Reads the journal in ``directory`` for forwarding (module doc)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_BATCH_BYTES,
        max_records: int = DEFAULT_BATCH_RECORDS,
    ) -> None:
        if max_bytes < 1 or max_records < 1:
            raise ValueError("a batch holds at least one byte and one record")
        self.directory = Path(directory)
        self.max_bytes = min(max_bytes, MAX_BATCH_BYTES)
        self.max_records = max_records
        self._cursor: _Cursor | None = None
        #: Where the last batch started: a batch sent again (a retry) is found without a scan.
        self._last: _Cursor | None = None
        #: Segment name -> (inode, seq of its first line): a segment's first line never changes.
        self._firsts: dict[str, tuple[int, int]] = {}

    def read(self, start: int, limit: int) -> Batch | None:
        """The lines from record ``start``, none at or past ``limit``; None if no complete
        line is there yet. ``JournalError`` if the journal does not hold record ``start``."""
        if start >= limit:
            return None
        cursor = self._cursor
        if cursor is None or cursor.seq != start:
            last = self._last
            cursor = replace(last) if last and last.seq == start else self._seek(start)
            self._cursor = cursor
        while True:
            data = self._pread(cursor.path, cursor.offset, self.max_bytes)
            if b"\n" in data or len(data) == self.max_bytes:  # lines, or the start of a long one
                break
            following = self.directory / segment_name(cursor.number + 1)
            if not following.exists():
                return None  # the live segment: nothing complete after the cursor yet
            data = self._pread(cursor.path, cursor.offset, self.max_bytes)
            if b"\n" in data:
                continue
            if data:
                raise JournalError(
                    f"{cursor.path.name} ends in a partial line, but {following.name} follows "
                    "(run `sealtrail journal verify`)"
                )
            cursor.number, cursor.path, cursor.offset = cursor.number + 1, following, 0
        end = data.rfind(b"\n") + 1
        count = data.count(b"\n", 0, end)
        want = min(count, self.max_records, limit - start)
        if want < count:
            end = _after_lines(data, end, count, want)
            count = want
        sealed_end = _last_seal_end(data, end)
        sealed = sealed_end > 0
        if sealed:
            count -= data.count(b"\n", sealed_end, end)  # usually none: the limit is a seal
            end = sealed_end
        else:  # the next seal is further than a batch (or a line is longer than one)
            data = self._pread(cursor.path, cursor.offset, MAX_BATCH_BYTES)
            end, sealed = _first_seal_end(data, limit - start)
            if not end:
                if len(data) == MAX_BATCH_BYTES:
                    raise JournalError(
                        f"{cursor.path.name} at byte {cursor.offset}: a line longer than "
                        f"{MAX_BATCH_BYTES} bytes, more than a collector takes"
                    )
                return None  # a long line still being written
            count = data.count(b"\n", 0, end)
        first = self._record(data[: data.index(b"\n")], cursor.path, cursor.offset)
        if first.seq != start:
            raise JournalError(
                f"{cursor.path.name} at byte {cursor.offset}: record {first.seq} where "
                f"record {start} was expected (run `sealtrail journal verify`)"
            )
        batch = Batch(start, count, data[:end], cursor.path.name, cursor.offset, first, sealed)
        self._last = replace(cursor)
        cursor.seq += count
        cursor.offset += end
        return batch

    # --------------------------------------------------------------------------- seeking
    def _seek(self, seq: int) -> _Cursor:
        """Where record ``seq`` starts: binary search on first lines, then a scan."""
        segments = list_segments(self.directory)
        lo, hi = 0, len(segments) - 1
        found = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            first = self._first_seq(segments[mid][1])
            if first is not None and first <= seq:
                found = mid
                lo = mid + 1
            else:
                hi = mid - 1
        if found < 0:
            raise JournalError(f"record {seq} is not in the journal at {self.directory}")
        number, path = segments[found]
        first = self._first_seq(path)
        assert first is not None
        offset = self._skip_lines(path, seq - first)
        if offset is None:
            raise JournalError(f"record {seq} is not in the journal at {self.directory}")
        return _Cursor(seq, number, path, offset)

    def _first_seq(self, path: Path) -> int | None:
        """The seq of a segment's first line; None for a segment without a complete line."""
        try:
            inode = path.stat().st_ino
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        known = self._firsts.get(path.name)
        if known is not None and known[0] == inode:
            return known[1]
        data = self._pread(path, 0, 4096)
        if b"\n" not in data and len(data) == 4096:
            data = self._long_line(path, 0)
        if b"\n" not in data:
            return None
        seq = self._record(data[: data.index(b"\n")], path, 0).seq
        self._firsts[path.name] = (inode, seq)
        return seq

    def _skip_lines(self, path: Path, lines: int) -> int | None:
        """The offset after the first ``lines`` complete lines of ``path`` (None: fewer)."""
        offset = 0
        while lines:
            data = self._pread(path, offset, self.max_bytes)
            end = data.rfind(b"\n") + 1
            if not end:
                if len(data) < self.max_bytes:
                    return None
                data = self._long_line(path, offset)
                end = len(data)
            count = data.count(b"\n", 0, end)
            if count > lines:
                end = _after_lines(data, end, count, lines)
                count = lines
            offset += end
            lines -= count
        return offset

    # --------------------------------------------------------------------------- IO
    def _pread(self, path: Path, offset: int, size: int) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return os.pread(fd, size, offset)
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _long_line(self, path: Path, offset: int) -> bytes:
        """One line longer than a batch, whole with its newline."""
        data = self._pread(path, offset, MAX_BATCH_BYTES + 1)
        nl = data.find(b"\n")
        if nl < 0:
            if len(data) > MAX_BATCH_BYTES:
                raise JournalError(
                    f"{path.name} at byte {offset}: a line longer than {MAX_BATCH_BYTES} bytes, "
                    "more than a collector takes"
                )
            return b""  # still being written
        return data[: nl + 1]

    @staticmethod
    def _record(line: bytes, path: Path, offset: int) -> Record:
        try:
            return parse_line(line)
        except FormatError as exc:
            raise JournalError(
                f"{path.name} at byte {offset}: not a journal record ({exc}); run "
                "`sealtrail journal verify`"
            ) from None


def _last_seal_end(data: bytes, end: int) -> int:
    """The offset after the last seal line in ``data[:end]`` (complete lines), 0 if none."""
    nl = end - 1
    while nl > 0:
        if data.endswith(SEAL_END, 0, nl):
            return nl + 1
        nl = data.rfind(b"\n", 0, nl)
    return 0


def _first_seal_end(data: bytes, lines: int) -> tuple[int, bool]:
    """The offset after the first seal line among the first ``lines`` complete lines of
    ``data``, and True; without one, the offset after those lines, and False."""
    pos = 0
    for _ in range(lines):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        pos = nl + 1
        if data.endswith(SEAL_END, 0, nl):
            return pos, True
    return pos, False


def _after_lines(data: bytes, end: int, count: int, keep: int) -> int:
    """The offset just after the ``keep``-th of the ``count`` lines in ``data[:end]``, found
    from whichever side is nearer (a batch cut to a limit usually drops only a few lines)."""
    if keep <= count - keep:
        pos = 0
        for _ in range(keep):
            pos = data.index(b"\n", pos) + 1
        return pos
    pos = end - 1  # the last line's newline
    for _ in range(count - keep):
        pos = data.rindex(b"\n", 0, pos)
    return pos + 1
