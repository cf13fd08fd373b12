"""The native core, ``agent/lib/libsealtrail.so`` (sources in ``native/``, built by ``make``).

It accelerates two hot paths and is never an authority: the journal verifier's fast path
(``agent.journal.native``) and the agent's record path for kernel events it only records
(``agent.journal.native.EventEncoder``). Each takes only what it is sure to handle exactly as
the Python reference code would, which the tests prove byte for byte, and hands everything
else back. Without the library (not built, or ``SEALTRAIL_NATIVE=0``), everything runs in
Python with the same results, only slower. It is loaded from this package's ``lib`` directory
only, never from the loader's search path.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).resolve().parent / "lib" / "libsealtrail.so"


class NativeError(Exception):
    pass


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SEALTRAIL_NATIVE", "1") == "0":
        return None
    if not LIBRARY.exists():
        log.debug("native core %s not built; using the Python paths", LIBRARY)
        return None
    try:
        return ctypes.CDLL(str(LIBRARY))
    except OSError as exc:  # e.g. built against a libcrypto this host lacks
        log.warning("native core %s does not load (%s); using the Python paths", LIBRARY, exc)
        return None


lib = _load()


def available() -> bool:
    return lib is not None


def check_size(name: str, expected: int, actual: int) -> None:
    if expected != actual:
        raise NativeError(
            f"{LIBRARY} does not match this agent ({name} is {actual} bytes, expected "
            f"{expected}): rebuild it with `make native`"
        )


def struct_sizes() -> dict[str, int]:
    """Sizes of the C structs shared with Python, as the library was built."""
    assert lib is not None
    names = ("st_tree", "st_chain", "st_encode", "st_batch", "st_verify")
    sizes = (ctypes.c_uint64 * len(names))()
    lib.st_sizes.restype = None
    lib.st_sizes.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
    lib.st_sizes(sizes)
    return dict(zip(names, sizes, strict=True))


# ------------------------------------------------------------------------------ ring buffer
class StBatch(ctypes.Structure):
    """Mirror of ``struct st_batch``: records appended as ``[u32 size][bytes]``."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("len", ctypes.c_uint64),
        ("cap", ctypes.c_uint64),
        ("count", ctypes.c_uint64),
        ("failed", ctypes.c_uint64),
    ]


def _collector() -> int | None:
    if lib is None:
        return None
    try:
        check_size("struct st_batch", ctypes.sizeof(StBatch), struct_sizes()["st_batch"])
        lib.st_batch_free.restype = None
        lib.st_batch_free.argtypes = [ctypes.POINTER(StBatch)]
        return ctypes.cast(lib.st_rb_collect, ctypes.c_void_p).value
    except (NativeError, AttributeError) as exc:  # a stale build: the Python callback works
        log.warning("native ring-buffer collector not used: %s", exc)
        return None


_COLLECT = _collector()


def sample_collector() -> int | None:
    """Address of ``st_rb_collect``, a libbpf ring-buffer sample callback (ctx: ``StBatch``)."""
    return _COLLECT


def free_batch(batch: StBatch) -> None:
    assert lib is not None
    lib.st_batch_free(ctypes.byref(batch))
