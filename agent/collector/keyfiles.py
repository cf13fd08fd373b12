"""Private key files: created 0600 from the first instant, and refused when others can read them.

Writing goes through ``agent.journal.durable.create_file`` (O_EXCL with the final mode at
creation, fsync, never overwriting). Reading goes through ``agent.journal.permissions``, which
checks the mode of the opened file itself, so what is checked is what is read.
"""

from __future__ import annotations

from pathlib import Path

from agent.collector.errors import PkiError
from agent.errors import KeyPermissionError
from agent.journal import permissions
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
        return permissions.read_private(path, owner=None)
    except OSError as exc:
        raise PkiError(f"cannot read private key {path}: {exc.strerror}") from None
    except KeyPermissionError as exc:
        raise PkiError(str(exc)) from None


def read_public(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None
