"""fanotify(7), bound once through ctypes: the two calls and the constants sealtrail uses.

The stdlib has no fanotify and the PyPI wrappers are unmaintained; the interface is a few
syscalls and two fixed structs. ``agent.enforce.fanotify`` answers permission events with it;
``sealtrail doctor`` checks with it that the kernel offers them.
"""

from __future__ import annotations

import ctypes
import os

from agent.errors import KernelError

# fanotify_init flags
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_CONTENT = 0x4
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_REPORT_TID = 0x100  # event pid is the thread id (to match per-thread syscall state)

# fanotify_mark flags
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_ONLYDIR = 0x8
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40
FAN_MARK_FILESYSTEM = 0x100

# event masks
FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_EVENT_ON_CHILD = 0x08000000

# struct fanotify_response.response
FAN_ALLOW = 0x1
FAN_DENY = 0x2
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.fanotify_mark.restype = ctypes.c_int


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """A new notification group's fd; KernelError (with errno) if the kernel refuses."""
    fd = int(_libc.fanotify_init(flags, event_f_flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise KernelError(f"fanotify_init: {os.strerror(err)}", err)
    return fd


def fanotify_mark(fd: int, flags: int, mask: int, path: str) -> None:
    """Add or remove ``mask`` on the object at ``path``; KernelError (with errno) if refused."""
    if _libc.fanotify_mark(fd, flags, mask, AT_FDCWD, os.fsencode(path)) < 0:
        err = ctypes.get_errno()
        raise KernelError(f"fanotify_mark {path}: {os.strerror(err)}", err)
