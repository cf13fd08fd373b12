"""Binding of the native journal core (``native/stjournal.c``, built to ``agent/lib``).

The native core is an accelerator, never an authority: ``st_verify_run`` takes a run of
ordinary records that the reference verifier (``verify.py``) would accept without a finding and
stops at the first line it is unsure of, which then goes through the reference path. Without the
library (not built, or ``SEALTRAIL_NATIVE=0``) everything runs in Python with the same results,
only slower. The library is loaded from this package's own ``lib`` directory only, never from
the loader's search path.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).resolve().parents[1] / "lib" / "libstjournal.so"
MAX_FRONTIER = 64

#: Why a run stopped (``StVerify.stop``).
STOP_END, STOP_LIMIT, STOP_TORN, STOP_SYNTAX, STOP_RECORD = range(5)


class StVerify(ctypes.Structure):
    """Mirror of ``struct st_verify``; its size is checked against the library on load."""

    _fields_ = [
        ("expected", ctypes.c_uint64),
        ("taken", ctypes.c_uint64),
        ("tree_size", ctypes.c_uint64),
        ("frontier_len", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last_offset", ctypes.c_uint64),
        ("stop", ctypes.c_uint64),
        ("host", ctypes.c_char_p),
        ("host_len", ctypes.c_uint64),
        ("boot", ctypes.c_char_p),
        ("boot_len", ctypes.c_uint64),
        ("prev", ctypes.c_uint8 * 32),
        ("frontier", (ctypes.c_uint8 * 32) * MAX_FRONTIER),
    ]


class NativeError(Exception):
    pass


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SEALTRAIL_NATIVE", "1") == "0":
        return None
    if not LIBRARY.exists():
        log.debug("native journal core %s not built; using the Python path", LIBRARY)
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:  # e.g. built against a libcrypto this host lacks
        log.warning(
            "native journal core %s does not load (%s); using the Python path", LIBRARY, exc
        )
        return None
    lib.st_abi_size.restype = ctypes.c_uint64
    lib.st_abi_size.argtypes = []
    if lib.st_abi_size() != ctypes.sizeof(StVerify):
        raise NativeError(
            f"{LIBRARY} does not match this agent (struct st_verify is {lib.st_abi_size()} "
            f"bytes, expected {ctypes.sizeof(StVerify)}): rebuild it with `make native`"
        )
    lib.st_verify_run.restype = ctypes.c_uint64
    lib.st_verify_run.argtypes = [
        ctypes.POINTER(StVerify),
        ctypes.c_char_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
    ]
    return lib


_lib = _load()


def available() -> bool:
    return _lib is not None


class VerifyRun:
    """Native verification state for one journal; the verifier syncs its own state in and out."""

    def __init__(self) -> None:
        if _lib is None:
            raise NativeError("native journal core not available")
        self.state = StVerify()
        self._ptr = ctypes.byref(self.state)
        self._run = _lib.st_verify_run
        self._host: bytes = b""
        self._boot: bytes = b""

    def set_identity(self, host: bytes, boot: bytes) -> None:
        """Canonical JSON content (no quotes) of the journal's host and current boot id."""
        st = self.state
        if host != self._host:
            self._host = host  # kept referenced: the struct holds a pointer into it
            st.host, st.host_len = host, len(host)
        if boot != self._boot:
            self._boot = boot
            st.boot, st.boot_len = boot, len(boot)

    def set_tree(self, size: int, frontier: list[bytes]) -> None:
        st = self.state
        st.tree_size = size
        st.frontier_len = len(frontier)
        for i, node in enumerate(frontier):
            ctypes.memmove(st.frontier[i], node, 32)

    def tree(self) -> tuple[int, list[bytes]]:
        st = self.state
        return st.tree_size, [bytes(st.frontier[i]) for i in range(st.frontier_len)]

    def run(self, content: bytes, pos: int, *, expected: int, prev: bytes, limit: int) -> int:
        """Take ordinary records from ``content[pos:]``; returns where it stopped."""
        st = self.state
        st.expected = expected
        st.limit = limit
        ctypes.memmove(st.prev, prev, 32)
        return int(self._run(self._ptr, content, len(content), pos))

    @property
    def prev(self) -> bytes:
        return bytes(self.state.prev)
