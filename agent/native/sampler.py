"""The ring-buffer sample sink in C (``st_batch_sample``, ``native/strecord.c``).

libbpf calls it for every record of a poll; it appends the record to one growing buffer
(``StBatch``) as ``[u32 size][bytes]``, so a poll hands Python one batch and no per-record
callback runs in Python (``agent.kernel.ringbuf``).
"""

from __future__ import annotations

import ctypes

from agent.native import available, library
from agent.native.layout import StBatch

__all__ = ["StBatch", "batch_sampler", "free_batch"]


def batch_sampler() -> int | None:
    """Address of ``st_batch_sample``, a libbpf ring-buffer sample callback whose ctx is a
    ``StBatch``; None without the native core."""
    if not available():
        return None
    return ctypes.cast(library().st_batch_sample, ctypes.c_void_p).value


def free_batch(batch: StBatch) -> None:
    library().st_batch_free(ctypes.byref(batch))
