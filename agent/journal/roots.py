"""The journal's Merkle roots at its recent seal boundaries, kept by the writer for the
forwarder: a collector's receipt names a size and a root, and the forwarder must know this
journal's own root at that size to trust it, without hashing the journal again per receipt.

A forwarded batch ends at a seal, so a receipt's size is a seal boundary: the size up to and
including a seal. The writer adds the root of each one as it seals (``JournalWriter._seal``); a
forwarder far behind (more than ``KEPT`` seals) or just started computes the root it needs from
the journal instead (``agent.forward.forwarder``).
"""

from __future__ import annotations

import collections
import threading

#: Seal boundaries kept (about 100 bytes each): 10 seals/s under load is 13 minutes, an idle
#: journal's heartbeat (10 s) a day.
KEPT = 8192


class SealRoots:
    """Size -> Merkle root of records 0 .. size-1, for the last ``keep`` seals. Thread-safe:
    the writer adds on the main thread, the forwarder reads on its own."""

    def __init__(self, keep: int = KEPT) -> None:
        self._keep = keep
        self._roots: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, size: int, root: bytes) -> None:
        with self._lock:
            self._roots[size] = root
            self._roots.move_to_end(size)
            while len(self._roots) > self._keep:
                self._roots.popitem(last=False)

    def get(self, size: int) -> bytes | None:
        with self._lock:
            return self._roots.get(size)
