"""BPF ring buffer consumer: libbpf's ring_buffer__poll with a Python callback.

The callback only copies the record's bytes into a list; decoding happens after the poll
returns, in batches, so the C→Python transition is the only per-record cost inside libbpf.
"""

from __future__ import annotations

import ctypes
import os

from agent.errors import KernelError
from agent.kernel import libbpf
from agent.kernel.libbpf import SampleFn, lib
from agent.kernel.loader import Map


class RingBuffer:
    def __init__(self, ringbuf: Map) -> None:
        self._batch: list[bytes] = []
        batch = self._batch
        string_at = ctypes.string_at

        def on_sample(_ctx: int, data: int, size: int) -> int:
            batch.append(string_at(data, size))
            return 0

        self._cb = SampleFn(on_sample)  # keep a reference: libbpf holds the raw pointer
        ptr = lib.ring_buffer__new(ringbuf.fd, self._cb, None, None)
        if not ptr:
            err = libbpf.errno_now()
            raise KernelError(f"ring buffer {ringbuf.name}: {os.strerror(err)}", err)
        self._ptr: int | None = ptr

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms (the latency bound on a quiet host); return every record."""
        if not self._ptr:
            raise KernelError("ring buffer is closed")
        ret = lib.ring_buffer__poll(self._ptr, timeout_ms)
        if ret < 0 and ret != -4:  # EINTR: a signal (Ctrl-C, SIGHUP) woke us; not an error
            libbpf.check(ret, "ring_buffer__poll")
        # The probes wake us only when the ring fills up (BPF_RB_NO_WAKEUP otherwise): after a
        # quiet timeout, take what arrived without a wakeup.
        libbpf.check(lib.ring_buffer__consume(self._ptr), "ring_buffer__consume")
        out = self._batch[:]
        self._batch.clear()
        return out

    def drain(self) -> list[bytes]:
        """Every record available now, without waiting."""
        if not self._ptr:
            raise KernelError("ring buffer is closed")
        libbpf.check(lib.ring_buffer__consume(self._ptr), "ring_buffer__consume")
        out = self._batch[:]
        self._batch.clear()
        return out

    def close(self) -> None:
        if self._ptr:
            lib.ring_buffer__free(self._ptr)
            self._ptr = None
