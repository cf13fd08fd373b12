"""fanotify permission events: deny open and exec on hosts without BPF-LSM.

The kernel holds the calling process inside open(2)/execve(2) until we answer ALLOW or DENY
(the caller then sees EPERM). This is the only enforcement mechanism here that waits for
userspace, so the answering thread does no IO on marked objects and never blocks on the
agent itself. Marks are narrow: inode marks for exact files, directory marks with
FAN_EVENT_ON_CHILD for prefixes (one per directory, kept current by the caller), a
filesystem mark only for exec permission.

When the agent dies the kernel allows pending and future events: fanotify enforcement does not
survive the agent (unlike pinned BPF programs). ``sealtrail doctor`` states this.

Bound by hand through ctypes: the stdlib has no fanotify, and the PyPI wrappers are
unmaintained; the interface is three syscalls and two fixed structs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import KernelError

log = logging.getLogger(__name__)

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

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_CONTENT = 0x4
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_REPORT_TID = 0x100  # event pid is the thread id (to match per-thread syscall state)

FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_ONLYDIR = 0x8
FAN_MARK_FILESYSTEM = 0x100

FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_EVENT_ON_CHILD = 0x08000000

FAN_ALLOW = 0x1
FAN_DENY = 0x2
AT_FDCWD = -100

# struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved; u16 metadata_len;
#                                  aligned_u64 mask; s32 fd; s32 pid; }
_META = struct.Struct("=IBBHQii")
# struct fanotify_response { s32 fd; u32 response; }
_RESPONSE = struct.Struct("=iI")
FANOTIFY_METADATA_VERSION = 3


@dataclass(frozen=True)
class PermissionRequest:
    tid: int  # the thread inside open/execve (FAN_REPORT_TID)
    path: str  # the kernel's path of the object (from the event fd)
    is_exec: bool  # execve of this file (FAN_OPEN_EXEC_PERM), else an open
    fd: int  # the event's fd on the object, valid during the decision (e.g. to fstat it)


Decide = Callable[[PermissionRequest], bool]  # True = allow


class FanotifyGuard:
    """Answers permission events from a dedicated thread using ``decide``.

    ``decide`` must be fast and must not open files that are marked. If it raises, the
    request is DENIED (fail closed) and the error logged.
    """

    def __init__(self, decide: Decide) -> None:
        self._decide = decide
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
        flags |= FAN_UNLIMITED_MARKS | FAN_REPORT_TID
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise KernelError(f"fanotify_init: {os.strerror(err)}", err)
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.answered = 0
        self.denied = 0
        self.errors = 0

    # ---- marks ----
    def _mark(self, flags: int, mask: int, path: str) -> None:
        if _libc.fanotify_mark(self.fd, flags, mask, AT_FDCWD, os.fsencode(path)) < 0:
            err = ctypes.get_errno()
            raise KernelError(f"fanotify_mark {path}: {os.strerror(err)}", err)

    def mark_file(self, path: str, *, open_: bool = True, exec_: bool = False) -> None:
        """Permission events for this inode (an exact file; follows symlinks to the target)."""
        mask = (FAN_OPEN_PERM if open_ else 0) | (FAN_OPEN_EXEC_PERM if exec_ else 0)
        self._mark(FAN_MARK_ADD, mask, path)

    def mark_dir(self, path: str, *, open_: bool = True, exec_: bool = False) -> None:
        """Permission events for the direct children of a directory (not deeper levels)."""
        mask = (FAN_OPEN_PERM if open_ else 0) | (FAN_OPEN_EXEC_PERM if exec_ else 0)
        self._mark(FAN_MARK_ADD | FAN_MARK_ONLYDIR, mask | FAN_EVENT_ON_CHILD, path)

    def mark_filesystem_exec(self, path: str) -> None:
        """Exec permission events for the whole filesystem holding ``path``."""
        self._mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC_PERM, path)

    def unmark(self, path: str, mask: int, *, filesystem: bool = False) -> None:
        flags = FAN_MARK_REMOVE | (FAN_MARK_FILESYSTEM if filesystem else 0)
        self._mark(flags, mask, path)

    # ---- answering ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fanotify-guard", daemon=True)
        self._thread.start()

    def _answer(self, event_fd: int, allow: bool) -> None:
        os.write(self.fd, _RESPONSE.pack(event_fd, FAN_ALLOW if allow else FAN_DENY))
        self.answered += 1
        if not allow:
            self.denied += 1

    def _handle(self, mask: int, event_fd: int, tid: int) -> None:
        allow = False
        try:
            if tid == threading.get_native_id():
                allow = True  # this very thread: it cannot wait for itself
            else:
                path = os.readlink(f"/proc/self/fd/{event_fd}")
                req = PermissionRequest(
                    tid=tid, path=path, is_exec=bool(mask & FAN_OPEN_EXEC_PERM), fd=event_fd
                )
                allow = bool(self._decide(req))
        except Exception:
            self.errors += 1
            log.exception("fanotify decision failed; denying (fail closed)")
            allow = False
        finally:
            try:
                self._answer(event_fd, allow)
            finally:
                os.close(event_fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop:
            poller.poll()
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError:
                if self._stop:
                    return
                raise
            off = 0
            while off + _META.size <= len(buf):
                event_len, vers, _, _meta_len, mask, event_fd, tid = _META.unpack_from(buf, off)
                if vers != FANOTIFY_METADATA_VERSION:
                    log.error(
                        "fanotify metadata version %d, want %d", vers, FANOTIFY_METADATA_VERSION
                    )
                if event_fd >= 0:
                    self._handle(mask, event_fd, tid)
                off += event_len

    def close(self) -> None:
        """Stop answering. The kernel allows what is pending once the group's fd is closed."""
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for fd in (self.fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FanotifyGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
