"""Who may reach a signing key: checked before a key is read or made, and refused (fail closed).

- A private key file that group or others may read may have leaked: with the live epoch key,
  the records of the current epoch can be changed and sealed again. One they may write can be
  swapped for a key of theirs. Only its owner may have access (0600 or narrower).
- The keys directory must not be writable by group or others: they could replace or remove
  keys. ``journal.pub`` is public (0644 is fine) but, like the directory, only its owner writes.
- Each of them must belong to the user who uses the keys, the agent's: another user could change
  its mode, or the file.

Every refusal names the file, what is wrong with it and the command that fixes it. A key is
checked on the opened file (fstat, not a stat of the name before the open), so what is checked
is what is read.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from agent.errors import KeyPermissionError


def check_directory(directory: Path, owner: int) -> None:
    """The keys directory: a directory of ``owner`` that only its owner may write."""
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyPermissionError(f"keys directory {directory} is not a directory")
    _check_owner("keys directory", directory, st, owner)
    _check_mode(
        f"keys directory {directory}",
        st,
        0o022,
        "group or others can write to it, so they could replace or remove keys; make it "
        f"writable by its owner only (chmod go-w {directory})",
    )


def check_public(path: Path, owner: int) -> None:
    """The genesis public key: anyone may read it, only ``owner`` may write it."""
    st = os.lstat(path)
    _check_regular("public key", path, st)
    _check_owner("public key", path, st, owner)
    _check_mode(
        f"public key {path}",
        st,
        0o022,
        "group or others can write to it, so they could replace the genesis key; make it "
        f"writable by its owner only (chmod 644 {path})",
    )


def check_private(path: Path, st: os.stat_result, owner: int | None) -> None:
    """A private key file (``st``: its stat): its owner's only, and ``owner``'s (None: any)."""
    _check_regular("private key", path, st)
    if owner is not None:
        _check_owner("private key", path, st, owner)
    _check_mode(
        f"private key {path}",
        st,
        0o077,
        f"group or others have access to it, so it may have leaked; make it its owner's only "
        f"(chmod 600 {path})",
    )


def read_private(path: Path, owner: int | None) -> bytes:
    """The bytes of a private key file, checked (``check_private``) on the opened file; a
    symlink is not followed. OSError when it cannot be opened (the caller says what is missing)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        check_private(path, os.fstat(fd), owner)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_mode(what: str, st: os.stat_result, refused: int, why_and_fix: str) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & refused:
        raise KeyPermissionError(f"{what} has mode {mode:04o}: {why_and_fix}")


def _check_regular(what: str, path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyPermissionError(f"{what} {path} is not a regular file")


def _check_owner(what: str, path: Path, st: os.stat_result, owner: int) -> None:
    if st.st_uid != owner:
        raise KeyPermissionError(
            f"{what} {path} belongs to {_user(st.st_uid)}, not to {_user(owner)}, who uses the "
            f"keys: another user can change it; give it to {_user(owner)} "
            f"(chown {_user(owner)} {path})"
        )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
