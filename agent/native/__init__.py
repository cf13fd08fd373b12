"""The native core, ``agent/native/lib/libsealtrail.so`` (sources in ``native/``, ``make native``).

It accelerates three hot paths and is never an authority: the journal's hash chain with the
verifier's fast path and the reopen scan's bulk chaining (``hashchain.NativeChain``), the
agent's record path for kernel events it only records (``encoder.EventEncoder``), and the
ring-buffer sample sink that batches records for them (``sampler``). Each takes only what it is
sure to handle exactly as the Python reference code would, which the tests prove byte for byte,
and hands everything else back. Without the library (not built, built from other sources, or
``SEALTRAIL_NATIVE=0``), everything runs in Python with the same results, only slower.

This module loads the library, from this package's ``lib`` directory only (never from the
loader's search path), and checks it against the ctypes mirror (``layout``) before anything
uses it: struct sizes and field offsets, and the values of the constants shared with Python.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

from agent.errors import SealtrailError

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).resolve().parent / "lib" / "libsealtrail.so"


class NativeError(SealtrailError):
    """The native core is missing where it is required, or does not match this agent."""


@functools.cache
def _bound() -> ctypes.CDLL | None:
    """The library, bound and checked; None if it is absent, disabled or does not match.

    Checked on first use rather than at import: the check compares the library's constants
    with the Python definitions (``layout.python_values``), whose modules import this one.
    """
    if os.environ.get("SEALTRAIL_NATIVE", "1") == "0":
        return None
    if not LIBRARY.exists():
        log.debug("native core %s not built; using the Python paths", LIBRARY)
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:  # e.g. built against a libcrypto this host lacks
        log.warning("native core %s does not load (%s); using the Python paths", LIBRARY, exc)
        return None
    from agent.native import layout

    try:
        layout.declare(lib)
        wrong = layout.mismatches(layout.read_table(lib))
    except AttributeError as exc:  # a stale build without some function
        wrong = [str(exc)]
    if wrong:
        log.warning(
            "native core %s does not match this agent (%s): rebuild it with `make native`; "
            "using the Python paths",
            LIBRARY,
            "; ".join(wrong[:3]),
        )
        return None
    return lib


def available() -> bool:
    """True if the native core is loaded and matches this agent."""
    return _bound() is not None


def library() -> ctypes.CDLL:
    """The checked library; raises ``NativeError`` where it is not available."""
    lib = _bound()
    if lib is None:
        raise NativeError(f"native core not available ({LIBRARY}): run `make native`")
    return lib
