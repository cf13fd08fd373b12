"""fanotify permission events: deny open and exec on hosts without BPF-LSM.

The kernel holds the calling process inside open(2)/execve(2) until we answer ALLOW or DENY
(the caller then sees EPERM). This is the only enforcement mechanism here that waits for
userspace, so the answering thread does no IO on marked objects and never blocks on the
agent itself. Marks are narrow: inode marks for exact files, directory marks with
FAN_EVENT_ON_CHILD for prefixes (one per directory, kept current by the caller), a
filesystem mark only for exec permission.

When the group's last fd is closed the kernel allows what is pending and asks nothing more.
Under systemd the agent hands its group to the service manager's file-descriptor store
(``agent.enforce.handover``), so a crash does not close it: permission events wait in the
kernel for the restarted agent, which is passed the same group back and answers them. So that
systemd can exec that agent while the group waits, the agent's own exec chain (its start
script, interpreter and the ELF loader) carries ignore marks (``ignore_exec``). Outside systemd
nothing holds the group: fanotify enforcement ends with the agent (the pinned in-kernel guard
does not, ``agent.kernel.pins``).

The calls are bound once, in ``agent.kernel.fanotify``.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.enforce.marks import MarkKey, MarkPlan
from agent.enforce.mounts import mount_point
from agent.errors import KernelError
from agent.kernel.abi import kernel_dev
from agent.kernel.fanotify import (
    FAN_ALLOW,
    FAN_CLASS_CONTENT,
    FAN_CLOEXEC,
    FAN_DENY,
    FAN_EVENT_ON_CHILD,
    FAN_MARK_ADD,
    FAN_MARK_FILESYSTEM,
    FAN_MARK_IGNORED_MASK,
    FAN_MARK_IGNORED_SURV_MODIFY,
    FAN_MARK_ONLYDIR,
    FAN_MARK_REMOVE,
    FAN_NONBLOCK,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    FAN_REPORT_TID,
    FAN_UNLIMITED_MARKS,
    FAN_UNLIMITED_QUEUE,
    fanotify_init,
    fanotify_mark,
)
from agent.native import fanfilter

log = logging.getLogger(__name__)

# struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved; u16 metadata_len;
#                                  aligned_u64 mask; s32 fd; s32 pid; }
_META = struct.Struct("=IBBHQii")
# struct fanotify_response { s32 fd; u32 response; }
_RESPONSE = struct.Struct("=iI")
FANOTIFY_METADATA_VERSION = 3


def parse_fdinfo(text: str) -> dict[tuple[int, int], int]:
    """``fanotify ino:1f sdev:800013 mflags:0 mask:10000 ...`` lines (fs/notify/fdinfo.c).
    Ignore-only marks (mask 0, the agent's own exec chain) are not events asked: left out."""
    marks = {key: int(fields["mask"], 16) for key, fields in fdinfo_marks(text).items()}
    return {key: mask for key, mask in marks.items() if mask}


def fdinfo_marks(text: str) -> dict[tuple[int, int], dict[str, str]]:
    """(kernel device, inode or 0 for a filesystem mark) -> the fields of its fdinfo line
    (``mask``, and for inode marks ``fhandle-type`` and ``f_handle``). Mount marks (mnt_id)
    are not ours and left out."""
    marks: dict[tuple[int, int], dict[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("fanotify "):
            continue
        fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
        if "sdev" not in fields or "mask" not in fields:
            continue
        marks[(int(fields["sdev"], 16), int(fields.get("ino", "0"), 16))] = fields
    return marks


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

    def __init__(self, decide: Decide, fd: int | None = None) -> None:
        """A new group, or with ``fd`` the group an earlier agent made (passed back from
        systemd's fd store): its marks, and the events waiting on them, are this one's now."""
        self._decide = decide
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
        flags |= FAN_UNLIMITED_MARKS | FAN_REPORT_TID
        self.inherited = fd is not None
        if fd is None:
            fd = fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        else:  # the store hands it back as it was made: non-blocking, as _run needs
            os.set_blocking(fd, False)
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        #: the native fast path (agent.native.fanfilter): events no rule names answered in C
        self._native = fanfilter.Reader.create()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.answered = 0
        self.denied = 0
        self.errors = 0

    # ---- marks ----
    def _mark(self, flags: int, mask: int, path: str) -> None:
        fanotify_mark(self.fd, flags, mask, path)

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

    def deny_unanswered(self, up_to: int = 65536) -> int:
        """Deny every permission event an earlier reader of this (inherited) group took and
        never answered: the kernel finds such an event by the fd number it gave that reader, so
        each number it could have been is answered FAN_DENY (a number no event holds is refused
        with ENOENT). Returns how many were denied. Only before this agent reads anything: then
        no event of its own is waiting for an answer."""
        if self._thread is not None:
            raise KernelError("deny_unanswered after the reader started")
        denied = 0
        for number in range(up_to):
            try:
                os.write(self.fd, _RESPONSE.pack(number, FAN_DENY))
                denied += 1
            except OSError:
                continue
        return denied

    @property
    def started(self) -> bool:
        return self._thread is not None

    def ignore_exec(self, path: str) -> None:
        """Never ask about exec of this inode (an ignore mark that survives writes): the
        agent's own exec chain, which must start while the group waits for an agent."""
        flags = FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY
        self._mark(flags, FAN_OPEN_EXEC_PERM, path)

    def unmark(self, path: str, mask: int, *, filesystem: bool = False) -> None:
        flags = FAN_MARK_REMOVE | (FAN_MARK_FILESYSTEM if filesystem else 0)
        self._mark(flags, mask, path)

    def mark_fd(self, fd: int, mask: int, *, add: bool, filesystem: bool = False) -> None:
        """Add or remove ``mask`` on the object an ``O_PATH`` fd holds (the inode, or with
        ``filesystem`` its whole filesystem). Through the fd, not a path: the object marked is
        the one that was planned, even if its name changed since."""
        flags = (FAN_MARK_ADD if add else FAN_MARK_REMOVE) | (
            FAN_MARK_FILESYSTEM if filesystem else 0
        )
        self._mark(flags, mask, f"/proc/self/fd/{fd}")

    def kernel_marks(self) -> dict[tuple[int, int], int]:
        """The marks the kernel holds for this group, from /proc/self/fdinfo: (kernel device
        number, inode or 0 for a filesystem mark) -> mask. Mount marks are not used."""
        return parse_fdinfo(self.fdinfo())

    def fdinfo(self) -> str:
        return Path(f"/proc/self/fdinfo/{self.fd}").read_text()

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

    def set_filter(self, spec: fanfilter.FilterSpec | None) -> None:
        """What the native reader may answer without Python (``None``: nothing); a no-op
        without the native core. Once this returns no event is judged by the previous one."""
        if self._native is not None:
            self._native.install(spec)

    @property
    def has_native(self) -> bool:
        return self._native is not None

    @property
    def answered_natively(self) -> int:
        """Permission events the native fast path answered ALLOW (not in ``answered``)."""
        return self._native.allowed if self._native is not None else 0

    def _read(self, poller: select.poll) -> bytes:
        """The next events to judge here (b"" when there is nothing, or woken)."""
        if self._native is not None:
            return self._native.read(self.fd, self._wake_r)  # blocks without the GIL
        poller.poll()
        try:
            return os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return b""

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop:
            try:
                buf = self._read(poller)
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
            if self._thread.is_alive():  # never free what a running reader uses
                self._native = None
            self._thread = None
        if self._native is not None:
            self._native.close()
            self._native = None
        for fd in (self.fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FanotifyGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MarkTable:
    """The marks one group holds, by kernel object, exactly as the kernel has them.

    A new plan is applied in two steps around the caller's switch to the new policy: ``add``
    puts every new bit in place (undoing its own additions if one fails, so the old plan stays
    whole), and ``prune`` takes away what the new plan no longer needs. No object is held open
    (an fd would keep its filesystem from being unmounted): a mark is placed through an
    ``O_PATH`` fd checked to be the planned object, and removed through its path while that
    still names it, else through the file handle the kernel lists for the mark in fdinfo.
    """

    def __init__(self, group: FanotifyGuard) -> None:
        self.group = group
        self.masks: dict[MarkKey, int] = {}
        self.places: dict[MarkKey, str] = {}
        self.skipped: list[str] = []

    def adopt(self) -> int:
        """Take the marks the group already holds (an inherited group: an earlier agent's
        plan) as this table's, so the next install keeps what it needs of them and prunes
        the rest by the file handle or filesystem the kernel lists. Returns how many."""
        for (kdev, ino), mask in self.group.kernel_marks().items():
            key = MarkKey(os.makedev(kdev >> 20, kdev & 0xFFFFF), ino)
            self.masks[key] = mask
            self.places.setdefault(key, "")  # no name known: removed through fdinfo
        return len(self.masks)

    def add(self, plan: MarkPlan, *, strict: bool = True) -> list[tuple[MarkKey, int]]:
        """Add every bit ``plan`` needs; returns what was added (for ``undo``). An object that
        is gone or changed since it was planned fails the whole add (``strict``: an install
        then keeps the old policy whole), or is left out of ``plan`` (a refresh after a
        directory change: one directory that vanished again must not hold back the others)."""
        added: list[tuple[MarkKey, int]] = []
        self.skipped = []  # places left out of ``plan`` by this add
        self._forget_dropped()
        try:
            for key, mask in sorted(plan.marks.items()):
                bits = mask & ~self.masks.get(key, 0)
                if not bits:
                    continue
                place = plan.places[key]
                fd = _open_object(key, place)
                if fd is None and not strict:
                    log.debug("fanotify: %s changed before it could be marked", place)
                    del plan.marks[key], plan.places[key], plan.refs[key]
                    # and its identity: an unmarked inode's number may be reused by a new file
                    for ident in [i for i in plan.identities if i[:2] == (key.dev, key.ino)]:
                        del plan.identities[ident]
                    self.skipped.append(place)
                    continue
                if fd is None:
                    raise KernelError(f"fanotify: {place} changed since the marks were planned")
                try:
                    self.group.mark_fd(fd, bits, add=True, filesystem=key.filesystem)
                finally:
                    os.close(fd)
                self.masks[key] = self.masks.get(key, 0) | bits
                self.places[key] = place
                added.append((key, bits))
        except BaseException:
            self.undo(added)
            raise
        return added

    def _forget_dropped(self) -> None:
        """Marks the kernel dropped by itself (the inode of a deleted file was evicted, its
        filesystem unmounted) are gone from here too: the inode number may already be a new
        file's, which then needs a mark of its own."""
        kernel = self.group.kernel_marks()
        for key in [k for k in self.masks if (kernel_dev(k.dev), k.ino) not in kernel]:
            del self.masks[key], self.places[key]

    def undo(self, added: list[tuple[MarkKey, int]]) -> None:
        held = fdinfo_marks(self.group.fdinfo())
        for key, bits in reversed(added):
            try:
                self._remove(key, bits, held)
            except KernelError as exc:
                log.error("fanotify: undoing a mark failed (kept): %s", exc)

    def prune(self, plan: MarkPlan) -> list[str]:
        """Remove what ``plan`` does not need; returns an error per mark that stays."""
        errors: list[str] = []
        held = fdinfo_marks(self.group.fdinfo())  # once: a storm can remove thousands
        for key, have in sorted(self.masks.items()):
            want = plan.marks.get(key, 0)
            if have & ~want:
                try:
                    self._remove(key, have if not want else have & ~want, held)
                except KernelError as exc:
                    errors.append(f"stale fanotify mark kept: {exc}")
        return errors

    def verify(self, plan: MarkPlan) -> list[str]:
        """Compare what the kernel holds with ``plan``: one error per difference."""
        kernel = self.group.kernel_marks()
        errors: list[str] = []
        wanted: set[tuple[int, int]] = set()
        for key, mask in sorted(plan.marks.items()):
            kkey = (kernel_dev(key.dev), key.ino)
            wanted.add(kkey)
            have = kernel.get(kkey, 0)
            if have != mask:
                what = "missing" if have & mask != mask else "different"
                errors.append(
                    f"fanotify mark {what} on {plan.places[key]}: kernel mask {have:#x}, "
                    f"plan {mask:#x}"
                )
        for kkey, mask in sorted(kernel.items()):
            if kkey not in wanted:
                errors.append(f"fanotify mark not in the plan: device {kkey[0]:#x} inode "
                              f"{kkey[1]} mask {mask:#x}")  # fmt: skip
        return errors

    def _remove(self, key: MarkKey, bits: int, held: dict[tuple[int, int], dict[str, str]]) -> None:
        remaining = self.masks[key] & ~bits
        if not remaining & ~FAN_EVENT_ON_CHILD:
            bits, remaining = self.masks[key], 0  # nothing left but flags: the whole mark
        fd = _open_object(key, self.places[key])
        if fd is None:
            fd = _open_by_handle(key, held.get((kernel_dev(key.dev), key.ino)))
        if fd is None and key.filesystem:  # any name on it will do: its root
            root = mount_point(key.dev)
            fd = _open_object(key, root) if root is not None else None
        if fd is None:  # not in fdinfo either: the kernel dropped it (inode freed, unmounted)
            self._forget(key, remaining)
            return
        try:
            self.group.mark_fd(fd, bits, add=False, filesystem=key.filesystem)
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
        finally:
            os.close(fd)
        self._forget(key, remaining)

    def _forget(self, key: MarkKey, remaining: int) -> None:
        if remaining:
            self.masks[key] = remaining
        else:
            del self.masks[key]
            del self.places[key]

    def close(self) -> None:
        self.masks.clear()
        self.places.clear()


def _open_object(key: MarkKey, place: str) -> int | None:
    """An ``O_PATH`` fd on ``place`` if it still names the object ``key`` (its filesystem, for
    a filesystem mark), else None."""
    try:
        fd = os.open(place, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    st = os.fstat(fd)
    if st.st_dev == key.dev and (key.filesystem or st.st_ino == key.ino):
        return fd
    os.close(fd)
    return None


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]  # fmt: skip


_libc = ctypes.CDLL(None, use_errno=True)
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]  # fmt: skip
_libc.name_to_handle_at.restype = ctypes.c_int
_AT_EMPTY_PATH = 0x1000


def name_here(fd: int) -> str | None:
    """The name, in this mount namespace, of the file ``fd`` refers to, found from the file
    itself: its handle opened again through a mount of its filesystem that this namespace
    shows, and that file's path. For a file reached through a mount no path here leads to (a
    detached ``open_tree`` clone, whose files read as "/f"), this is the name the rules mean.
    None if the filesystem cannot say (no handles, a file that has no name left). Needs
    CAP_DAC_READ_SEARCH, which the agent has."""
    handle = _FileHandle(128, 0)  # MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(fd, b"", ctypes.byref(handle), ctypes.byref(mount_id),
                               _AT_EMPTY_PATH) != 0:  # fmt: skip
        return None
    try:
        again = _open_handle(handle, os.fstat(fd).st_dev)
    except OSError:
        return None
    if again is None:
        return None
    try:
        name = os.readlink(f"/proc/self/fd/{again}")
    except OSError:
        return None
    finally:
        os.close(again)
    return name if name.startswith("/") and not name.endswith(" (deleted)") else None


def _open_by_handle(key: MarkKey, fields: dict[str, str] | None) -> int | None:
    """The marked inode, through the file handle fdinfo lists for its mark (``fields``; the
    object was renamed since it was marked). Needs CAP_DAC_READ_SEARCH, which the agent has."""
    if key.filesystem or fields is None or "f_handle" not in fields:
        return None
    raw = bytes.fromhex(fields["f_handle"])
    handle = _FileHandle(len(raw), int(fields["fhandle-type"], 16))
    ctypes.memmove(handle.f_handle, raw, len(raw))
    return _open_handle(handle, key.dev)


def _open_handle(handle: _FileHandle, dev: int) -> int | None:
    """An ``O_PATH`` fd on the object ``handle`` names on the filesystem ``dev``, opened
    through a mount of it this namespace shows; None if it has none or the handle is stale.
    OSError if that mount cannot be opened."""
    mount = mount_point(dev)
    if mount is None:
        return None
    mfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # not O_PATH: EBADF
    try:
        fd = _libc.open_by_handle_at(mfd, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC)
    finally:
        os.close(mfd)
    return fd if fd >= 0 else None
