"""Append-only and immutable inode flags (``chattr +a`` / ``chattr +i``) through ioctl.

FS_APPEND_FL on the live segment means even root must clear the flag (CAP_LINUX_IMMUTABLE)
before truncating or rewriting it; FS_IMMUTABLE_FL on sealed segments forbids any change.
Filesystems without the flags (tmpfs, overlayfs) or a process without CAP_LINUX_IMMUTABLE get a
logged warning once per reason and the journal goes on unprotected: the hash chain and seals
still make tampering evident, the flags only make it harder.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# linux/fs.h: _IOR('f', 1, long) and _IOW('f', 2, long) on 64-bit.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
FS_APPEND_FL = 0x00000020

_warned: set[str] = set()


def _warn_once(reason: str, path: Path) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("journal files left without inode protection (%s, e.g. %s)", reason, path)


def get_flags(path: Path) -> int:
    """The inode flags of ``path``, or 0 where the filesystem has none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        return int(buf[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def set_flag(path: Path, flag: int, on: bool) -> bool:
    """Set or clear one inode flag. Returns False (after a warning) where unsupported."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        new = (buf[0] | flag) if on else (buf[0] & ~flag)
        if new != buf[0]:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("l", [new]), False)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            _warn_once("filesystem has no inode flags", path)
        elif exc.errno == errno.EPERM:
            _warn_once("no CAP_LINUX_IMMUTABLE", path)
        else:
            _warn_once(os.strerror(exc.errno or 0), path)
        return False
    finally:
        os.close(fd)


def clear_all(directory: Path) -> None:
    """Remove both flags from every file in ``directory`` (tests, archival, deletion)."""
    for path in directory.iterdir():
        if path.is_file() and get_flags(path) & (FS_APPEND_FL | FS_IMMUTABLE_FL):
            set_flag(path, FS_APPEND_FL | FS_IMMUTABLE_FL, False)
