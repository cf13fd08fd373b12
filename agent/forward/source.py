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
quote); one ``rfind`` finds the last one. Lines are not counted: records are numbered without
gaps, so a batch from ``start`` to a seal at seq S holds ``S - start + 1`` of them, and only
its first line and that seal are parsed (the first must be record ``start``; a gap between
the two is the collector's to find, as it checks every seq and the chain).

Each batch is read into one buffer of ``max_bytes`` that the source keeps, and ``Batch.data``
is a read-only view of it, sent as it is: no copy of a batch is made, and no buffer of a
megabyte is allocated and freed per batch (which costs page faults and TLB shootdowns, more
than the copy). The view is valid until the next ``read``, which releases it: a batch kept
longer raises ``ValueError`` on use instead of showing the next batch's bytes (``bytes(data)``
keeps a copy).

The segment holding ``start`` is found by a binary search over the segments' first lines
(their seqs), then a scan of that one segment; after a batch, a cursor remembers where the
next line starts, so reading on costs no scan. At the end of a segment the next one is looked
for: the writer finishes a segment (its final seal) before it creates the next, so once the
next exists, one more read of the old one sees all of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.errors import FormatError, JournalError
from agent.journal.record import Record, parse_line
from agent.journal.segments import list_segments, segment_name

#: A batch interval's records at 10 k events/s (``pacing.BATCH_INTERVAL``: 5,000 lines of about
#: 250 bytes) in one request, with room; a backlog goes in as few requests as the collector's
#: body limit allows. The buffer is this large, resident only as far as batches fill it.
DEFAULT_BATCH_BYTES = 4 << 20
DEFAULT_BATCH_RECORDS = 16384
#: The largest batch read to reach a seal, and the longest line: the collector's default body
#: limit (docs/collector.md).
MAX_BATCH_BYTES = 16 << 20
#: How every seal line ends: in canonical JSON (keys sorted) ``type`` is a seal's last key,
#: and a line ending so can be nothing else (module doc).
SEAL_END = b',"type":"seal"}'
_SEAL_LINE_END = SEAL_END + b"\n"


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` stored lines of records ``start`` .. ``start + count - 1`` (``data``: each
    line with its newline, a view valid until the source's next read), read at ``offset`` of
    ``segment``; ``first`` and ``last`` are the first and the last record; ``sealed``: the
    last line is a seal (else no seal was found before the limit)."""

    start: int
    count: int
    data: memoryview
    segment: str
    offset: int
    first: Record
    last: Record
    sealed: bool
    #: what ``data`` views (from its first byte), for ``lines_from_end``
    _held: bytes | bytearray = field(repr=False, compare=False)

    @property
    def end(self) -> int:
        return self.start + self.count

    def lines_from_end(self) -> Iterator[bytes]:
        """The lines without their newlines, last first (copies, each only when asked)."""
        end = len(self.data) - 1  # ValueError once the source has read on (module doc)
        while end >= 0:
            start = self._held.rfind(b"\n", 0, end) + 1
            yield bytes(self._held[start:end])
            end = start - 1


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
        self._buffer = bytearray(self.max_bytes)  # grown if max_bytes is raised
        self._view: memoryview | None = None  # the last batch's data, released by the next read

    def read(self, start: int, limit: int) -> Batch | None:
        """The lines from record ``start``, none at or past ``limit``; None if no complete
        line is there yet. ``JournalError`` if the journal does not hold record ``start``."""
        if start >= limit:
            return None
        if self._view is not None:
            self._view.release()
            self._view = None
        cursor = self._cursor
        if cursor is None or cursor.seq != start:
            retry = self._last
            cursor = replace(retry) if retry and retry.seq == start else self._seek(start)
            self._cursor = cursor
        size = min(self.max_bytes, MAX_BATCH_BYTES)
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        buf = self._buffer
        while True:
            n = self._pread_into(buf, size, cursor.path, cursor.offset)
            if buf.find(b"\n", 0, n) >= 0 or n == size:  # lines, or the start of a long one
                break
            following = self.directory / segment_name(cursor.number + 1)
            if not following.exists():
                return None  # the live segment: nothing complete after the cursor yet
            n = self._pread_into(buf, size, cursor.path, cursor.offset)
            if buf.find(b"\n", 0, n) >= 0:
                continue
            if n:
                raise JournalError(
                    f"{cursor.path.name} ends in a partial line, but {following.name} follows "
                    "(run `sealtrail journal verify`)"
                )
            cursor.number, cursor.path, cursor.offset = cursor.number + 1, following, 0
        data: bytes | bytearray = buf
        wanted = min(limit, start + self.max_records)
        found = self._last_seal(buf, buf.rfind(b"\n", 0, n) + 1, wanted, cursor)
        if found is None:  # the next seal is further than a batch (or a line is longer than one)
            if n == size and size < MAX_BATCH_BYTES and buf.find(_SEAL_LINE_END, 0, n) < 0:
                data = self._pread(cursor.path, cursor.offset, MAX_BATCH_BYTES)
                n = len(data)
            found = self._next_seal(data, n, start, limit, cursor)
            if found is None:
                if n == MAX_BATCH_BYTES and data.find(b"\n", 0, n) < 0:
                    raise JournalError(
                        f"{cursor.path.name} at byte {cursor.offset}: a line longer than "
                        f"{MAX_BATCH_BYTES} bytes, more than a collector takes"
                    )
                return None  # a long line still being written
        end, last, sealed = found
        first_end = data.find(b"\n", 0, end)
        first = last if first_end + 1 == end else self._record(data, 0, first_end, cursor)
        if first.seq != start:
            raise JournalError(
                f"{cursor.path.name} at byte {cursor.offset}: record {first.seq} where "
                f"record {start} was expected (run `sealtrail journal verify`)"
            )
        if last.seq < start:
            raise JournalError(
                f"{cursor.path.name}: record {last.seq} after record {start} "
                "(run `sealtrail journal verify`)"
            )
        count = last.seq - start + 1
        view = memoryview(data).toreadonly()[:end]
        self._view = view
        batch = Batch(
            start, count, view, cursor.path.name, cursor.offset, first, last, sealed, data
        )
        self._last = replace(cursor)
        cursor.seq += count
        cursor.offset += end
        return batch

    # --------------------------------------------------------------------------- seals
    def _last_seal(
        self, data: bytearray, end: int, wanted: int, cursor: _Cursor
    ) -> tuple[int, Record, bool] | None:
        """The last seal in ``data[:end]`` (complete lines) before record ``wanted``: the
        offset after it and the seal; None if there is none."""
        pos = end
        while (at := data.rfind(_SEAL_LINE_END, 0, pos)) >= 0:
            nl = at + len(SEAL_END)
            line = data.rfind(b"\n", 0, at) + 1
            seal = self._record(data, line, nl, cursor)
            if seal.seq < wanted:
                return nl + 1, seal, True
            pos = line
        return None

    def _next_seal(
        self, data: bytes | bytearray, n: int, start: int, limit: int, cursor: _Cursor
    ) -> tuple[int, Record, bool] | None:
        """In ``data[:n]``: the first seal, if it is before record ``limit``, else the lines of
        records ``start`` .. ``limit - 1`` (those there are), not sealed. None: no line."""
        at = data.find(_SEAL_LINE_END, 0, n)
        if at >= 0:
            nl = at + len(SEAL_END)
            seal = self._record(data, data.rfind(b"\n", 0, at) + 1, nl, cursor)
            if seal.seq < limit:
                return nl + 1, seal, True
        pos = line = 0
        for _ in range(limit - start):  # rare: a limit short of the next seal (a rejection)
            nl = data.find(b"\n", pos, n)
            if nl < 0:
                break
            line, pos = pos, nl + 1
        if not pos:
            return None
        return pos, self._record(data, line, pos - 1, cursor), False

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
        seq = _parse(data[: data.index(b"\n")], path, 0).seq
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

    def _pread_into(self, buf: bytearray, size: int, path: Path, offset: int) -> int:
        """Bytes read at ``offset`` of ``path`` into ``buf[:size]`` (the batch buffer)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        try:
            with memoryview(buf)[:size] as view:
                return os.preadv(fd, [view], offset)
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    @staticmethod
    def _record(data: bytes | bytearray, start: int, end: int, cursor: _Cursor) -> Record:
        """The record of the line ``data[start:end]``, read at ``cursor.offset``."""
        return _parse(bytes(data[start:end]), cursor.path, cursor.offset + start)


def _parse(line: bytes, path: Path, offset: int) -> Record:
    try:
        return parse_line(line)
    except FormatError as exc:
        raise JournalError(
            f"{path.name} at byte {offset}: not a journal record ({exc}); run "
            "`sealtrail journal verify`"
        ) from None


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
