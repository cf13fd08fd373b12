"""``collector export``: a host's stored records as a journal directory that ``sealtrail journal
verify`` checks without the collector (docs/collector.md, "collector export").

::

    OUT/seg-000001.jsonl ...   the stored lines, byte for byte, each ended by "\\n"
    OUT/journal.pub            the genesis key the host was enrolled with

Segments are split as the writer splits them (docs/journal-format.md, section 8): after the
first seal that ends a segment of at least ``segment_bytes``. Nothing is judged or repaired:
what the store holds is what is written, so an independent verify sees exactly that.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent import paths
from agent.collector.errors import CollectorError
from agent.collector.hoststate import enrolled_host
from agent.collector.store import Store
from agent.errors import FormatError
from agent.journal.durable import create_file, fsync_dir
from agent.journal.keys import PublicKey
from agent.journal.record import parse_line
from agent.journal.segments import segment_name
from agent.journal.writer import DEFAULT_SEGMENT_BYTES

_SEAL_MARK = b'"type":"seal"'
_BUFFER = 1 << 20


@dataclass(frozen=True)
class Exported:
    host: str
    out: Path
    records: int
    segments: tuple[Path, ...]
    key: Path
    key_id: str


def export_host(
    store: Store, name: str, out: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
) -> Exported:
    """Write the stored records of host ``name`` and its genesis key into ``out``, which must
    not exist or be empty; everything is fsynced (files and directory) before it returns. On a
    failure the files it wrote are removed again."""
    if segment_bytes < 1:
        raise CollectorError(f"a segment size is at least 1 byte, not {segment_bytes}")
    host = enrolled_host(store, name)
    genesis = PublicKey.from_line(host.genesis_key)
    size = store.head(name).size
    if size == 0:
        raise CollectorError(f"host {name} has no records yet: nothing to export")
    out = Path(out).absolute()
    made = _prepare(out)
    writer = _SegmentWriter(out, segment_bytes)
    key = out / paths.PUBLIC_KEY_NAME
    try:
        for _, line in store.records(name, 0, size):
            writer.add(line)
        writer.close()
        create_file(key, genesis.to_line().encode("ascii"), 0o644)  # fsyncs file and directory
        if made:
            fsync_dir(out.parent)
    except BaseException as exc:
        writer.discard()
        with contextlib.suppress(OSError):
            key.unlink(missing_ok=True)  # the directory was empty: nobody else's file
            if made:
                out.rmdir()
        if isinstance(exc, OSError):
            raise CollectorError(f"cannot export to {out}: {exc.strerror}") from None
        raise
    return Exported(name, out, writer.records, tuple(writer.written), key, genesis.key_id)


def _prepare(out: Path) -> bool:
    """Refuse a non-empty ``out``; create it (0700) if missing. True if it was created."""
    if out.is_dir():
        try:
            if next(out.iterdir(), None) is not None:
                raise CollectorError(f"--out {out} is not empty: export writes a new directory")
        except OSError as exc:
            raise CollectorError(f"cannot read --out {out}: {exc.strerror}") from None
        return False
    if out.exists() or out.is_symlink():
        raise CollectorError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise CollectorError(f"cannot create --out {out}: {exc.strerror}") from None
    return True


class _SegmentWriter:
    """Lines into numbered segment files; a file is closed (fsynced) after a seal once it has
    ``segment_bytes``, as ``JournalWriter`` does."""

    def __init__(self, out: Path, segment_bytes: int) -> None:
        self.out = out
        self.segment_bytes = segment_bytes
        self.written: list[Path] = []
        self.records = 0
        self._file: BinaryIO | None = None
        self._size = 0

    def add(self, line: bytes) -> None:
        if self._file is None:
            path = self.out / segment_name(len(self.written) + 1)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            self.written.append(path)
            self._file = os.fdopen(fd, "wb", buffering=_BUFFER)
            self._size = 0
        self._file.write(line)
        self._file.write(b"\n")
        self._size += len(line) + 1
        self.records += 1
        if self._size >= self.segment_bytes and _is_seal(line):
            self._close_file()

    def close(self) -> None:
        self._close_file()
        fsync_dir(self.out)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for path in self.written:
            path.unlink(missing_ok=True)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _is_seal(line: bytes) -> bool:
    """Whether a stored line is a seal record (a malformed one is not: it is copied as it is)."""
    if _SEAL_MARK not in line:
        return False
    try:
        return parse_line(line).type == "seal"
    except FormatError:
        return False
