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
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
COALESCE_S = 0.005


@dataclass(frozen=True)
class NewDir:
    """A directory that appeared in a watched directory (created or moved in), or with
    ``gone`` one that went away from it (deleted or moved out)."""

    parent: str
    name: str
    gone: bool = False


class DirWatch:
    """``changed(new)`` is called (from this thread) after watched directories or the mount
    table changed; events that arrive together are coalesced into one call. ``new`` lists the
    directories that appeared, or is None when anything else changed (a directory moved away
    or deleted, a file in a directory where files matter, a mount, a lost event): then the
    whole plan must be made again."""

    def __init__(
        self,
        changed: Callable[[list[NewDir] | None], None],
        mounts_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._changed = changed
        self._mounts_changed = mounts_changed
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
        self._paths: dict[int, str] = {}  # wd -> the directory it watches
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
                    err = ctypes.get_errno()
                    if err in (errno.ENOENT, errno.ENOTDIR):
                        # removed (or replaced by a file) since it was planned: nothing is
                        # there to watch or mark, and its parent's watch reported the removal
                        log.debug("not watched, gone since planned: %s", path)
                        continue
                    failed.append(f"{path}: {os.strerror(err)}")
                else:
                    self._wds[path] = wd
                    self._paths[wd] = path
            for path in set(self._wds) - set(directories):
                wd = self._wds.pop(path)
                self._files.pop(wd, None)
                self._paths.pop(wd, None)
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
        last_update_s = 0.0
        while not self._stop:
            ready = poller.poll()
            if self._stop:
                return
            # changes come in bursts (a tree unpacked, a rename loop): gather them into one
            # update, waiting as long as the last update took (at least a few ms), so a storm
            # costs the agent at most half its time and never holds the enforcer's lock back
            # to back
            time.sleep(min(max(COALESCE_S, last_update_s), 1.0))
            new: list[NewDir] | None = []
            relevant = False
            for fd, _ in ready:
                if fd == self._fd:
                    drained = self._drain()
                    relevant |= drained != []
                    new = None if new is None or drained is None else new + drained
                elif fd == self._mounts:
                    os.lseek(self._mounts, 0, os.SEEK_SET)
                    os.read(self._mounts, 1 << 20)
                    self._mounts_changed()
                    relevant, new = True, None
            if relevant:
                started = time.monotonic()
                try:
                    self._changed(new)
                except Exception:  # the next change tries again; the thread must not die
                    log.exception("fanotify marks: updating after a directory change failed")
                last_update_s = time.monotonic() - started

    def _drain(self) -> list[NewDir] | None:
        """The new directories in what inotify queued, or None if the whole plan is due."""
        new: list[NewDir] | None = []
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return new
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size : off + _EVENT.size + length].rstrip(b"\0")
                off += _EVENT.size + length
                with self._lock:
                    parent, files = self._paths.get(wd), self._files.get(wd, False)
                if mask & IN_ISDIR and parent is not None and name:
                    if new is not None:  # a directory came or went below a watched one
                        gone = bool(mask & (IN_DELETE | IN_MOVED_FROM))
                        new.append(NewDir(parent, os.fsdecode(name), gone=gone))
                elif (
                    mask & IN_Q_OVERFLOW
                    or (mask & (IN_DELETE_SELF | IN_MOVE_SELF) and parent == "/")
                    or (files and not mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF))
                ):
                    # lost events, the root itself, or a file where files matter (an exact
                    # rule's file replaced); a watched directory moved or deleted is reported
                    # by its parent's watch (every watched directory's parent is watched)
                    new = None

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._mounts, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
