"""The fanotify reader's native fast path (``native/stfanotify.c``): permission events the
filter proves no rule names are answered ALLOW in C, without the GIL; the rest are handed back
as raw fanotify metadata for ``Enforcer._decide_permission``.

``FilterSpec`` is what the enforcer knows of its live plan (built by
``agent.enforce.enforcer.Enforcer._filter_spec``); ``Reader.install`` swaps it in (``None``: ask
Python about every event, as while a policy is switched). Without the native core
(``agent.native.available``) there is no ``Reader`` and Python answers everything, as before.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent import native
from agent.policy.compile import MASK_BYTES
from agent.policy.evaluate import IdScreen

#: at least the C reader's own read buffer (``struct st_fan_reader.buf``)
BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FilterSpec:
    """When an event may be answered ALLOW without Python (native/stfanotify.c's comment)."""

    mount_ns: tuple[int, int]  # (st_dev, st_ino) of the agent's /proc/self/ns/mnt
    #: marked directories: (path in the agent's namespace, st_dev, st_ino)
    dirs: tuple[tuple[str, int, int], ...] = ()
    #: open and exec entries of the compiled paths table: (path bytes, exact)
    patterns: tuple[tuple[bytes, bool], ...] = ()
    identities: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    #: per operation ("open", "exec"): the uid and gid masks of its rules; an event may be
    #: answered by the caller's ids alone only where every operation it may be judged as has one
    screens: Mapping[str, IdScreen] = field(default_factory=dict)


def own_mount_ns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/mnt")
    return st.st_dev, st.st_ino


#: native/stfanotify.c's screen numbers
SCREENS = {"open": 0, "exec": 1}


def _mask(mask: int) -> bytes:
    """A rule mask as the C filter takes it: the compiled tables' st_mask bytes."""
    return mask.to_bytes(MASK_BYTES, "little")


_P = ctypes.c_void_p
_U64 = ctypes.c_uint64


def _declare(lib: ctypes.CDLL) -> None:
    lib.st_fan_filter_new.argtypes, lib.st_fan_filter_new.restype = [_U64, _U64], _P
    lib.st_fan_filter_free.argtypes, lib.st_fan_filter_free.restype = [_P], None
    lib.st_fan_filter_dir.argtypes = [_P, ctypes.c_char_p, _U64, _U64]
    lib.st_fan_filter_dir.restype = ctypes.c_int
    lib.st_fan_filter_pattern.argtypes = [_P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    lib.st_fan_filter_pattern.restype = ctypes.c_int
    lib.st_fan_filter_identity.argtypes = [_P, _U64, _U64]
    lib.st_fan_filter_identity.restype = ctypes.c_int
    lib.st_fan_filter_screen.argtypes = [_P, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    lib.st_fan_filter_screen.restype = ctypes.c_int
    lib.st_fan_filter_screen_id.argtypes = [
        _P,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_char_p,
    ]
    lib.st_fan_filter_screen_id.restype = ctypes.c_int
    lib.st_fan_filter_seal.argtypes, lib.st_fan_filter_seal.restype = [_P], None
    lib.st_fan_filter_allows.argtypes = [_P, ctypes.c_int, ctypes.c_int, _U64]
    lib.st_fan_filter_allows.restype = ctypes.c_int
    lib.st_fan_reader_new.argtypes, lib.st_fan_reader_new.restype = [], _P
    lib.st_fan_reader_swap.argtypes, lib.st_fan_reader_swap.restype = [_P, _P], _P
    lib.st_fan_reader_allowed.argtypes, lib.st_fan_reader_allowed.restype = [_P], _U64
    lib.st_fan_reader_free.argtypes, lib.st_fan_reader_free.restype = [_P], None
    lib.st_fan_read.argtypes = [_P, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.st_fan_read.restype = ctypes.c_ssize_t


def _library() -> ctypes.CDLL | None:
    if not native.available():
        return None
    lib = native.library()
    if not hasattr(lib, "st_fan_read"):  # a library built before this file
        return None
    _declare(lib)
    return lib


class Filter:
    """One sealed C filter built from a spec (owned until handed to a Reader)."""

    def __init__(self, lib: ctypes.CDLL, spec: FilterSpec) -> None:
        self._lib = lib
        ptr = lib.st_fan_filter_new(*spec.mount_ns)
        if not ptr:
            raise MemoryError("st_fan_filter_new")
        self.ptr: int | None = ptr
        try:
            for path, dev, ino in spec.dirs:
                self._ok(lib.st_fan_filter_dir(ptr, os.fsencode(path), dev, ino), path)
            for text, exact in spec.patterns:
                self._ok(lib.st_fan_filter_pattern(ptr, text, len(text), int(exact)), text)
            for dev, ino in spec.identities:
                self._ok(lib.st_fan_filter_identity(ptr, dev, ino), (dev, ino))
            for operation, screen in spec.screens.items():
                self._screen(ptr, SCREENS[operation], screen)
        except BaseException:
            lib.st_fan_filter_free(ptr)
            self.ptr = None
            raise
        lib.st_fan_filter_seal(ptr)

    def _screen(self, ptr: int, which: int, screen: IdScreen) -> None:
        lib = self._lib
        self._ok(lib.st_fan_filter_screen(ptr, which, _mask(screen.uid_any),
                                          _mask(screen.gid_any)), screen)  # fmt: skip
        for kind, table in ((0, screen.uids), (1, screen.gids)):
            for value, mask in table.items():
                rc = lib.st_fan_filter_screen_id(ptr, which, kind, value, _mask(mask))
                self._ok(rc, (kind, value))

    @staticmethod
    def _ok(rc: int, what: object) -> None:
        if rc:
            raise OSError(-rc, f"fanotify filter entry {what!r}: {os.strerror(-rc)}")

    def allows(self, event_fd: int, tid: int, mask: int) -> bool:
        """The filter's answer for one event (tests; the reader asks it in C)."""
        assert self.ptr is not None
        return bool(self._lib.st_fan_filter_allows(self.ptr, event_fd, tid, mask))

    def release(self) -> int:
        ptr, self.ptr = self.ptr, None
        assert ptr is not None
        return ptr

    def close(self) -> None:
        if self.ptr is not None:
            self._lib.st_fan_filter_free(self.release())


class Reader:
    """The C reader of one fanotify group: ``read`` blocks without the GIL, answers what the
    installed filter allows and returns the other events' metadata."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        ptr = lib.st_fan_reader_new()
        if not ptr:
            raise MemoryError("st_fan_reader_new")
        self._ptr: int | None = ptr
        self._out = ctypes.create_string_buffer(BUFFER_BYTES)

    @classmethod
    def create(cls) -> Reader | None:
        """A reader, or None without the native core (Python answers everything)."""
        lib = _library()
        return cls(lib) if lib is not None else None

    def install(self, spec: FilterSpec | None) -> None:
        """Judge with ``spec`` from now on (``None``: hand every event to Python). When this
        returns no event is being judged with the previous filter."""
        assert self._ptr is not None
        new = Filter(self._lib, spec).release() if spec is not None else None
        old = self._lib.st_fan_reader_swap(self._ptr, new)
        if old:
            self._lib.st_fan_filter_free(old)

    @property
    def allowed(self) -> int:
        """Events answered in C so far."""
        return int(self._lib.st_fan_reader_allowed(self._ptr)) if self._ptr else 0

    def read(self, fan_fd: int, wake_fd: int) -> bytes:
        """The metadata of the events for Python (b"" if woken); OSError on a read error."""
        assert self._ptr is not None
        n = self._lib.st_fan_read(self._ptr, fan_fd, wake_fd, self._out, BUFFER_BYTES)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return self._out.raw[:n]

    def close(self) -> None:
        """Only once the thread that reads has stopped."""
        if self._ptr is not None:
            self._lib.st_fan_reader_free(self._ptr)
            self._ptr = None
