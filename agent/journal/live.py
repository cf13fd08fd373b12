"""The live segment: the one file records are appended to, its durability and inode flags.

One ``O_APPEND`` descriptor; ``write`` hands bytes to the kernel before it returns (short
writes finished), ``sync`` is ``fdatasync``; the file gets FS_APPEND_FL while live and, once
``seal``ed, FS_IMMUTABLE_FL instead. Any failed write or sync closes it for good: the caller
(the writer) is then closed too, and reopening the journal recovers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from agent.errors import JournalError
from agent.journal import protect
from agent.journal.chain import Chain
from agent.journal.durable import fsync_dir, write_all
from agent.journal.segments import list_segments, live_segment, segment_name


class LiveSegment:
    """Segment ``number`` of ``directory``, open for appending (created if missing)."""

    def __init__(self, directory: Path, number: int, *, protect_files: bool) -> None:
        self.directory = directory
        self.number = number
        self.path = directory / segment_name(number)
        self._protect = protect_files
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o640)
        self.closed = False
        self.size = os.fstat(self.fd).st_size
        fsync_dir(directory)
        if protect_files:
            protect.set_flag(self.path, protect.FS_APPEND_FL, True)

    @classmethod
    def open(cls, directory: Path, *, protect_files: bool) -> LiveSegment:
        """The segment a reopened journal appends to (``segments.live_segment``)."""
        return cls(directory, live_segment(list_segments(directory)), protect_files=protect_files)

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the kernel before returning: a crash of the agent loses nothing
        appended. Batching writes measured no faster (the syscall is not the cost)."""
        try:
            self.size += write_all(self.fd, data)
        except OSError as exc:
            self._fail("write", exc)

    def write_line(self, chain: Chain, line: bytes) -> None:
        """Write one record line and its newline, and chain it (one call where native)."""
        try:
            chain.write(self.fd, line)
        except OSError as exc:
            self._fail("write", exc)
        self.size += len(line) + 1

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:  # after a failed fsync the page cache state is unknowable
            self._fail("fsync", exc)

    def _fail(self, what: str, exc: OSError) -> NoReturn:
        # The line may be half written: stop here; reopening cuts the torn tail and says so.
        self.close()
        raise JournalError(f"journal {what} failed, journal closed: {exc.strerror}") from exc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def seal(self) -> None:
        """Close for good: the file loses FS_APPEND_FL and gets FS_IMMUTABLE_FL."""
        self.close()
        if self._protect:
            protect.set_flag(self.path, protect.FS_APPEND_FL, False)
            protect.set_flag(self.path, protect.FS_IMMUTABLE_FL, True)

    def next(self) -> LiveSegment:
        """The segment after this one, created and open."""
        return LiveSegment(self.directory, self.number + 1, protect_files=self._protect)
