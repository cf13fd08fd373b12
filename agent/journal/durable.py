"""Durable file operations shared by the key store and the writer."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` atomically with ``mode``; never overwrite, never visible half-written.

    The temporary file is created with O_EXCL and the final mode from the first instant (the
    umask can only narrow it, and fchmod pins it), then hard-linked into place. A crash can
    leave the temporary name behind (``leftovers``): before the link it holds data never used;
    after the link it is the same inode as ``path``, so erasing ``path`` in place erases it.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # FileExistsError if ``path`` exists: never overwrite
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (created, renamed, unlinked files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftovers(directory: Path) -> list[Path]:
    """Temporary files ``create_file`` left behind in a crash."""
    return sorted(directory.glob(".*.tmp-*"))


def write_all(fd: int, data: bytes) -> int:
    """Write all of ``data`` to ``fd``: after a short write (a signal, a full disk) the rest.
    Returns the byte count; an OSError leaves an unknown part written."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            n = os.write(fd, view)
            view = view[n:]
            written += n
    return written
