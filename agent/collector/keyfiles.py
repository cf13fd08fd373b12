"""Private key files: created 0600 from the first instant, and refused when others can read them.

Writing goes through ``agent.journal.durable.create_file`` (O_EXCL with the final mode at
creation, fsync, never overwriting). Reading checks the mode of the opened file itself (fstat,
not a stat of the name before the open), so what is checked is what is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.collector.errors import PkiError
from agent.journal.durable import create_file


def write_private(path: Path, data: bytes) -> None:
    _create(path, data, 0o600, "a key is never overwritten")


def write_public(path: Path, data: bytes) -> None:
    _create(path, data, 0o644, "it is never overwritten")


def _create(path: Path, data: bytes, mode: int, policy: str) -> None:
    try:
        create_file(path, data, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists; {policy}") from None
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror}") from None


def read_private(path: Path) -> bytes:
    """The bytes of a private key file; refuses a file that group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise PkiError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PkiError(f"private key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise PkiError(
                f"private key {path} has mode {mode:04o}: group or others have access to it, so it "
                f"may have leaked; make it its owner's only (chmod 600 {path})"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_public(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None
