"""Keep fanotify marks current: tell the enforcer when a watched directory changes.

fanotify directory marks see direct children only, and marks are placed on the directories
that exist at load. A directory created, renamed or deleted below a rule's path afterwards, or
a filesystem mounted there, changes what must be marked. This thread watches the plan's
directories with inotify (which, unlike a fanotify notification group, reports names without
file handles to resolve) and ``/proc/self/mountinfo`` for mounts, and calls ``changed`` so the
enforcer plans again and adds the marks. The window between the change and the new mark is
reported by ``policy check --host`` for every rule it concerns and is covered after the fact by
the event stream (the rule's ``fallback``).

Bound by hand through ctypes: the stdlib has no inotify; it is three syscalls and one struct.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import struct
import threading
from collections.abc import Callable, Mapping

from agent.errors import KernelError

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: A new entry (file or directory) or one taken away, and the directory itself moved or gone.
WATCH_MASK = (
    IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
    | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
)  # fmt: skip
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len


class DirWatch:
    """``changed()`` is called (from this thread) after any watched directory or the mount
    table changed; events that arrive together are coalesced into one call."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise KernelError(f"inotify_init1: {os.strerror(err)}", err)
        self._fd = fd
        self._mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._wds: dict[str, int] = {}
        self._files: dict[int, bool] = {}  # wd -> whether new files matter there, not only dirs
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sealtrail-dirwatch", daemon=True)
        self._thread.start()

    @property
    def watched(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._wds)

    def watch(self, directories: Mapping[str, bool]) -> list[str]:
        """Watch exactly these directories from now on (the value: whether a new *file* there
        matters, or only directories); returns the ones that could not be watched."""
        failed: list[str] = []
        with self._lock:
            for path in sorted(set(directories) - set(self._wds)):
                wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), WATCH_MASK)
                if wd < 0:
                    failed.append(f"{path}: {os.strerror(ctypes.get_errno())}")
                else:
                    self._wds[path] = wd
            for path in set(self._wds) - set(directories):
                wd = self._wds.pop(path)
                self._files.pop(wd, None)
                _libc.inotify_rm_watch(self._fd, wd)
            for path, files in directories.items():
                if path in self._wds:
                    self._files[self._wds[path]] = files
        return failed

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._mounts, select.POLLPRI | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        os.read(self._mounts, 1 << 20)  # the mount table as of now; POLLPRI says it changed
        while not self._stop:
            ready = poller.poll()
            if self._stop:
                return
            relevant = False
            for fd, _ in ready:
                if fd == self._fd:
                    relevant |= self._drain()
                elif fd == self._mounts:
                    os.lseek(self._mounts, 0, os.SEEK_SET)
                    os.read(self._mounts, 1 << 20)
                    relevant = True
            if relevant:
                try:
                    self._changed()
                except Exception:  # the next change tries again; the thread must not die
                    log.exception("fanotify marks: updating after a directory change failed")

    def _drain(self) -> bool:
        relevant = False
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return relevant
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                off += _EVENT.size + length
                if mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_ISDIR):
                    relevant = True  # a directory came or went: the plan may change
                elif not mask & IN_IGNORED:
                    with self._lock:
                        relevant |= self._files.get(wd, False)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._mounts, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
