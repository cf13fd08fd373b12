"""BPF ring buffer consumer over libbpf's ring_buffer__poll.

With the native core, libbpf calls the sample sink ``st_batch_sample`` (C,
``agent.native.sampler``), which appends every record to one growing buffer as
``[u32 size][bytes]``: a poll hands Python one batch and no per-record callback runs in Python.
Without it, a Python callback copies each record into a list. Either way, decoding happens
after the poll returns.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

from agent.errors import KernelError
from agent.kernel import libbpf
from agent.kernel.libbpf import SampleFn, lib
from agent.kernel.loader import Map
from agent.native import sampler


def record_at(batch: bytes, pos: int) -> tuple[bytes, int]:
    """The record of a native batch (``[u32 size][bytes]``...) at ``pos``, and the next pos."""
    size = int.from_bytes(batch[pos : pos + 4], "little")
    return batch[pos + 4 : pos + 4 + size], pos + 4 + size


def split_batch(batch: bytes) -> Iterator[bytes]:
    """The records of a native batch, in order."""
    pos, end = 0, len(batch)
    while pos < end:
        record, pos = record_at(batch, pos)
        yield record


class RingBuffer:
    def __init__(self, ringbuf: Map) -> None:
        self._batch: list[bytes] = []
        self._native: sampler.StBatch | None = None
        #: Records the native sample sink could not store (out of memory): lost, and counted.
        self.failed = 0
        sink = sampler.batch_sampler()
        if sink is not None:
            self._native = sampler.StBatch()
            self._cb = ctypes.cast(sink, SampleFn)
            ctx: int | None = ctypes.addressof(self._native)
        else:
            batch = self._batch
            string_at = ctypes.string_at

            def on_sample(_ctx: int, data: int, size: int) -> int:
                batch.append(string_at(data, size))
                return 0

            self._cb = SampleFn(on_sample)  # keep a reference: libbpf holds the raw pointer
            ctx = None
        ptr = lib.ring_buffer__new(ringbuf.fd, self._cb, ctx, None)
        if not ptr:
            err = libbpf.errno_now()
            raise KernelError(f"ring buffer {ringbuf.name}: {os.strerror(err)}", err)
        self._ptr: int | None = ptr

    @property
    def batches(self) -> bool:
        """True if ``poll_batch`` is available (the native sample sink)."""
        return self._native is not None

    def _wait(self, timeout_ms: int) -> None:
        if not self._ptr:
            raise KernelError("ring buffer is closed")
        ret = lib.ring_buffer__poll(self._ptr, timeout_ms)
        if ret < 0 and ret != -4:  # EINTR: a signal (Ctrl-C, SIGHUP) woke us; not an error
            libbpf.check(ret, "ring_buffer__poll")
        # The probes wake us only when the ring fills up (BPF_RB_NO_WAKEUP otherwise): after a
        # quiet timeout, take what arrived without a wakeup.
        self._consume()

    def _consume(self) -> None:
        if not self._ptr:
            raise KernelError("ring buffer is closed")
        libbpf.check(lib.ring_buffer__consume(self._ptr), "ring_buffer__consume")

    def _take(self) -> bytes:
        b = self._native
        assert b is not None
        out = ctypes.string_at(b.buf, b.len) if b.len else b""
        b.len = b.count = 0
        if b.failed:
            self.failed += b.failed
            b.failed = 0
        return out

    def poll_batch(self, timeout_ms: int) -> bytes:
        """Wait up to timeout_ms (the latency bound on a quiet host); every record, batched."""
        self._wait(timeout_ms)
        return self._take()

    def _records(self) -> list[bytes]:
        if self._native is not None:
            return list(split_batch(self._take()))
        out = self._batch[:]
        self._batch.clear()
        return out

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms (the latency bound on a quiet host); return every record."""
        self._wait(timeout_ms)
        return self._records()

    def drain(self) -> list[bytes]:
        """Every record available now, without waiting."""
        self._consume()
        return self._records()

    def close(self) -> None:
        if self._ptr:
            lib.ring_buffer__free(self._ptr)
            self._ptr = None
        if self._native is not None:
            sampler.free_batch(self._native)
