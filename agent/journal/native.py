"""ctypes side of the native journal code (``native/stjournal.c``, ``native/strecord.c``).

``VerifyRun``: the verifier's fast path. ``st_verify_run`` takes a run of ordinary records the
reference verifier (``verify.py``) would accept without a finding and stops at the first line
it is unsure of, which then goes through the reference path.

``Chain`` / ``NativeTree``: the writer's chain state (next seq, previous hash, Merkle frontier)
in one C struct, so records the writer encodes in Python and records ``EventEncoder`` encodes
in C extend the same chain without copying state back and forth.

``EventEncoder``: network events straight from ring-buffer bytes to journal lines (see
``native/strecord.c`` for what it takes and what it hands back).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable

import orjson

from agent import native
from agent.native import NativeError, check_size

log = logging.getLogger(__name__)

MAX_FRONTIER = 64
_Hash = ctypes.c_uint8 * 32

#: Why a verify run stopped (``StVerify.stop``).
STOP_END, STOP_LIMIT, STOP_TORN, STOP_SYNTAX, STOP_RECORD = range(5)
#: Why an encode run stopped (``StEncode.stop``).
ENC_END, ENC_LIMIT, ENC_FULL, ENC_SLOW = range(4)


class StTree(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("frontier_len", ctypes.c_uint64),
        ("frontier", _Hash * MAX_FRONTIER),
    ]


class StChain(ctypes.Structure):
    _fields_ = [("next_seq", ctypes.c_uint64), ("prev", _Hash), ("tree", StTree)]


class StVerify(ctypes.Structure):
    _fields_ = [
        ("chain", ctypes.POINTER(StChain)),
        ("taken", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last_offset", ctypes.c_uint64),
        ("stop", ctypes.c_uint64),
        ("host", ctypes.c_char_p),
        ("host_len", ctypes.c_uint64),
        ("boot", ctypes.c_char_p),
        ("boot_len", ctypes.c_uint64),
    ]


_U32P = ctypes.POINTER(ctypes.c_uint32)


class StEncode(ctypes.Structure):
    _fields_ = [
        ("host", ctypes.c_char_p),
        ("host_len", ctypes.c_uint64),
        ("boot", ctypes.c_char_p),
        ("boot_len", ctypes.c_uint64),
        ("clock_offset", ctypes.c_int64),
        ("fixed_ts", ctypes.c_uint64),
        ("ops_mask", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("run_end", ctypes.c_uint64),
        ("n_exe", ctypes.c_uint64),
        ("exe_pid", _U32P),
        ("exe_off", _U32P),
        ("exe_len", _U32P),
        ("exe_json", ctypes.c_char_p),
        ("out", ctypes.c_void_p),
        ("out_cap", ctypes.c_uint64),
        ("out_len", ctypes.c_uint64),
        ("taken", ctypes.c_uint64),
        ("stop", ctypes.c_uint64),
    ]


def _bind() -> ctypes.CDLL | None:
    lib = native.lib
    if lib is None:
        return None
    try:
        return _declare(lib)
    except (NativeError, AttributeError) as exc:  # a stale build: the Python paths still work
        log.warning("native core not used: %s", exc)
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    u64, p = ctypes.c_uint64, ctypes.POINTER
    sizes = native.struct_sizes()
    for name, cls in (
        ("st_tree", StTree),
        ("st_chain", StChain),
        ("st_encode", StEncode),
        ("st_verify", StVerify),
    ):
        check_size(f"struct {name}", ctypes.sizeof(cls), sizes[name])
    lib.st_verify_run.restype = u64
    lib.st_verify_run.argtypes = [p(StVerify), ctypes.c_char_p, u64, u64]
    lib.st_tree_append.restype = None
    lib.st_tree_append.argtypes = [p(StTree), ctypes.c_char_p]
    lib.st_tree_root.restype = None
    lib.st_tree_root.argtypes = [p(StTree), ctypes.c_char_p]
    lib.st_chain_lines.restype = u64
    lib.st_chain_lines.argtypes = [p(StChain), ctypes.c_char_p, u64]
    lib.st_chain_write.restype = ctypes.c_int64
    lib.st_chain_write.argtypes = [p(StChain), ctypes.c_int, ctypes.c_char_p, u64, ctypes.c_char_p]
    lib.st_chain_add.restype = None
    lib.st_chain_add.argtypes = [p(StChain), ctypes.c_char_p, u64]
    lib.st_scan_run.restype = u64
    lib.st_scan_run.argtypes = [ctypes.c_char_p, u64, u64, u64, _U32P, ctypes.c_uint32, _U32P]
    lib.st_encode_run.restype = u64
    lib.st_encode_run.argtypes = [p(StChain), p(StEncode), ctypes.c_char_p, u64]
    return lib


_lib = _bind()


def available() -> bool:
    return _lib is not None


def _need() -> ctypes.CDLL:
    if _lib is None:
        raise NativeError("native core not available")
    return _lib


def _set_tree(tree: StTree, size: int, frontier: list[bytes]) -> None:
    tree.size = size
    tree.frontier_len = len(frontier)
    for i, node in enumerate(frontier):
        ctypes.memmove(tree.frontier[i], node, 32)


def _get_tree(tree: StTree) -> tuple[int, list[bytes]]:
    return tree.size, [bytes(tree.frontier[i]) for i in range(tree.frontier_len)]


# ------------------------------------------------------------------------------ verify
class VerifyRun:
    """The verifier's fast path over a ``Chain``: takes the ordinary records that continue it."""

    def __init__(self, chain: Chain | None = None) -> None:
        lib = _need()
        self.chain = chain if chain is not None else Chain(0, bytes(32), 0, [])
        self.state = StVerify()
        self.state.chain = ctypes.pointer(self.chain.state)
        self.ptr = ctypes.byref(self.state)
        self._run = lib.st_verify_run
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

    def run(self, content: bytes, pos: int, limit: int) -> int:
        """Take ordinary records from ``content[pos:]`` into the chain; returns where it
        stopped (``state.taken`` records, the last at ``state.last_offset``)."""
        self.state.limit = limit
        return int(self._run(self.ptr, content, len(content), pos))


# ------------------------------------------------------------------------------ writer
class Chain:
    """The writer's chain: next seq, previous record hash, Merkle frontier, in one C struct."""

    def __init__(self, next_seq: int, prev: bytes, size: int, frontier: list[bytes]) -> None:
        lib = _need()
        self.state = StChain()
        self.ptr = ctypes.byref(self.state)
        self._add = lib.st_chain_add
        self._write = lib.st_chain_write
        self._hex = ctypes.create_string_buffer(64)
        self._verify: VerifyRun | None = None
        self.load(next_seq, prev, size, frontier)

    def load(self, next_seq: int, prev: bytes, size: int, frontier: list[bytes]) -> None:
        """Take over a chain state kept elsewhere (the Python verifier's)."""
        self.state.next_seq = next_seq
        ctypes.memmove(self.state.prev, prev, 32)
        _set_tree(self.state.tree, size, frontier)

    def add(self, line: bytes) -> None:
        """Chain one record line (without its newline): hash, tree leaf, prev, seq."""
        self._add(self.ptr, line, len(line))

    def write(self, fd: int, line: bytes) -> str:
        """Write ``line`` and its newline to ``fd`` (one writev), then chain it; returns the
        new prev (hex). Raises OSError with nothing chained if the write fails."""
        err = self._write(self.ptr, fd, line, len(line), self._hex)
        if err:
            raise OSError(-err, os.strerror(-err))
        return self._hex.raw.decode("ascii")

    def add_lines(self, content: bytes) -> int:
        """Chain every complete line of ``content``; returns the offset after the last one."""
        return int(_need().st_chain_lines(self.ptr, content, len(content)))

    def add_ordinary(self, content: bytes, pos: int, host: str, boot_id: str) -> int:
        """Chain the run of ordinary records (as the verifier's fast path judges them: they
        parse and continue this chain) from ``pos``; returns where the run stopped."""
        if self._verify is None:
            self._verify = VerifyRun(self)
        run = self._verify
        run.set_identity(orjson.dumps(host)[1:-1], orjson.dumps(boot_id)[1:-1])
        return run.run(content, pos, 1 << 62)

    def frontier(self) -> tuple[int, list[bytes]]:
        """The tree's size and frontier."""
        return _get_tree(self.state.tree)

    @property
    def next_seq(self) -> int:
        return int(self.state.next_seq)

    @property
    def prev(self) -> bytes:
        return bytes(self.state.prev)

    def tree(self) -> NativeTree:
        return NativeTree(self)


class NativeTree:
    """The ``CompactTree`` interface over a ``Chain``'s tree (same RFC 9162 hashing)."""

    def __init__(self, chain: Chain) -> None:
        lib = _need()
        self._chain = chain  # keeps the struct alive
        self._tree = chain.state.tree
        self._ptr = ctypes.byref(self._tree)
        self._append = lib.st_tree_append
        self._root = lib.st_tree_root

    @property
    def size(self) -> int:
        return int(self._tree.size)

    def append(self, data: bytes) -> None:
        self._append(self._ptr, data)

    def root(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        self._root(self._ptr, out)
        return out.raw

    @property
    def frontier(self) -> list[bytes]:
        return _get_tree(self._tree)[1]


class EventEncoder:
    """Network events from a ring-buffer batch straight to journal lines, in C.

    ``exe_of(pid)`` names the binary of a pid as the Python decoder would (the process
    table); ``clock_offset`` is the decoder's boottime-to-wall offset. The host and boot id are
    the writer's.
    """

    MAX_PIDS = 64
    OUT_CAP = 4 << 20

    def __init__(
        self,
        *,
        host: str,
        boot_id: str,
        clock_offset: int,
        exe_of: Callable[[int], str | None],
    ) -> None:
        lib = _need()
        self._scan = lib.st_scan_run
        self._encode = lib.st_encode_run
        self._exe_of = exe_of
        self._host = orjson.dumps(host)
        self._boot = orjson.dumps(boot_id)
        e = self.params = StEncode()
        self.ptr = ctypes.byref(e)
        e.host, e.host_len = self._host, len(self._host)
        e.boot, e.boot_len = self._boot, len(self._boot)
        e.clock_offset = clock_offset
        self._out = ctypes.create_string_buffer(self.OUT_CAP)
        e.out = ctypes.addressof(self._out)
        e.out_cap = self.OUT_CAP
        self._pids = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._n_pids = ctypes.c_uint32()
        self._exe_pid = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._exe_off = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._exe_len = (ctypes.c_uint32 * self.MAX_PIDS)()
        e.exe_pid = ctypes.cast(self._exe_pid, _U32P)
        e.exe_off = ctypes.cast(self._exe_off, _U32P)
        e.exe_len = ctypes.cast(self._exe_len, _U32P)
        self._exe_json = b""

    def scan(self, batch: bytes, pos: int, ops_mask: int) -> int:
        """End of the run from ``pos`` that only ``ops_mask`` ops make up (and at most
        MAX_PIDS pids); prepares the exe of each of its pids."""
        end = int(
            self._scan(
                batch,
                len(batch),
                pos,
                ops_mask,
                ctypes.cast(self._pids, _U32P),
                self.MAX_PIDS,
                ctypes.byref(self._n_pids),
            )
        )
        blob = bytearray()
        n = 0
        for i in range(self._n_pids.value):
            pid = self._pids[i]
            exe = self._exe_of(pid)
            try:
                text = orjson.dumps(exe)  # the exact encoding the Python path would write
            except orjson.JSONEncodeError:
                continue  # (surrogates): such a pid's events take the Python path
            self._exe_pid[n], self._exe_off[n], self._exe_len[n] = pid, len(blob), len(text)
            blob += text
            n += 1
        self._exe_json = bytes(blob)
        e = self.params
        e.exe_json = self._exe_json
        e.n_exe = n
        e.ops_mask = ops_mask
        e.run_end = end
        return end

    def encode(self, chain: Chain, batch: bytes, pos: int, *, limit: int, fixed_ts: int) -> int:
        """Encode the prepared run from ``pos`` into ``chain``; returns where it stopped.
        The lines are in ``output()``, the count in ``params.taken``."""
        e = self.params
        e.limit = limit
        e.fixed_ts = fixed_ts
        return int(self._encode(chain.ptr, self.ptr, batch, pos))

    def output(self) -> bytes:
        return ctypes.string_at(self._out, self.params.out_len)


def realtime_clock(clock: Callable[[], int]) -> bool:
    """True if ``clock`` is the wall clock the native encoder reads per record itself."""
    return clock is time.time_ns
