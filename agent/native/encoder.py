"""Network, fork and exit events from ring-buffer bytes straight to journal lines, in C
(``native/strecord.c``).

``st_encode_run`` takes only records it can encode exactly as the Python path would
(``agent/events/decode.py`` + the daemon's event fields + ``JournalWriter``) and stops at the
first one it cannot; see ``native/strecord.c`` for what it takes and what it hands back.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from agent.native import library
from agent.native.layout import StEncode

if TYPE_CHECKING:
    from agent.native.hashchain import NativeChain

_U32P = ctypes.POINTER(ctypes.c_uint32)


class EventEncoder:
    """Network, fork and exit events from a ring-buffer batch straight to journal lines, in C.

    ``exe_of(pid)`` names the binary of a pid as the Python decoder would (the process
    table); ``clock_offset`` is the decoder's boottime-to-wall offset. The host and boot id are
    the writer's.
    """

    MAX_PIDS = 64
    MAX_PROCS = 256  # ST_SCAN_MAX_PROCS
    OUT_CAP = 4 << 20

    def __init__(
        self,
        *,
        host: str,
        boot_id: str,
        clock_offset: int,
        exe_of: Callable[[int], str | None],
    ) -> None:
        lib = library()
        self._scan = lib.st_scan_run
        self._encode = lib.st_encode_run
        self._exe_of = exe_of
        self._host = orjson.dumps(host)
        self._boot = orjson.dumps(boot_id)
        e = self._params = StEncode()
        self._ptr = ctypes.byref(e)
        e.host, e.host_len = self._host, len(self._host)
        e.boot, e.boot_len = self._boot, len(self._boot)
        e.clock_offset = clock_offset
        self._out = ctypes.create_string_buffer(self.OUT_CAP)
        e.out = ctypes.addressof(self._out)
        e.out_cap = self.OUT_CAP
        self._pids = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._n_pids = ctypes.c_uint32()
        self._procs = (ctypes.c_uint64 * self.MAX_PROCS)()
        self._n_procs = ctypes.c_uint32()
        self._exe_pid = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._exe_off = (ctypes.c_uint32 * self.MAX_PIDS)()
        self._exe_len = (ctypes.c_uint32 * self.MAX_PIDS)()
        e.exe_pid = ctypes.cast(self._exe_pid, _U32P)
        e.exe_off = ctypes.cast(self._exe_off, _U32P)
        e.exe_len = ctypes.cast(self._exe_len, _U32P)
        self._exe_json = b""

    def scan(self, batch: bytes, pos: int, ops_mask: int) -> int:
        """End of the run from ``pos`` that only ``ops_mask`` ops make up (and at most
        MAX_PIDS pids, MAX_PROCS forks and exits); prepares the exe of each of its pids.
        Its forks and exits are in ``procs``: the process table must learn those the encoder
        takes (``native/strecord.c``: a run ends before a pid whose exe one of them changed)."""
        end = int(
            self._scan(
                batch,
                len(batch),
                pos,
                ops_mask,
                ctypes.cast(self._pids, _U32P),
                self.MAX_PIDS,
                ctypes.byref(self._n_pids),
                self._procs,
                self.MAX_PROCS,
                ctypes.byref(self._n_procs),
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
        e = self._params
        e.exe_json = self._exe_json
        e.n_exe = n
        e.ops_mask = ops_mask
        e.run_end = end
        return end

    def encode(
        self, chain: NativeChain, batch: bytes, pos: int, *, limit: int, fixed_ts: int
    ) -> int:
        """Encode the prepared run from ``pos`` into ``chain``; returns where it stopped.
        The lines are in ``output()``, their count in ``taken``, why it stopped in ``stop``.
        (Called by ``NativeChain.add_events``.)"""
        e = self._params
        e.limit = limit
        e.fixed_ts = fixed_ts
        return int(self._encode(chain.ptr, self._ptr, batch, pos))

    @property
    def procs(self) -> list[int]:
        """Offsets of the forks and exits of the last scanned run, in order."""
        return self._procs[: self._n_procs.value]

    @property
    def taken(self) -> int:
        """Records the last ``encode`` took."""
        return int(self._params.taken)

    @property
    def stop(self) -> int:
        """Why the last ``encode`` stopped (``layout.ENC_*``)."""
        return int(self._params.stop)

    def output(self) -> bytes:
        return ctypes.string_at(self._out, self._params.out_len)


def realtime_clock(clock: Callable[[], int]) -> bool:
    """True if ``clock`` is the wall clock the native encoder reads per record itself."""
    return clock is time.time_ns
