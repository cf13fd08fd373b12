"""The journal's hash chain: the seq the next record carries, the hash of the last record, and
the Merkle tree over every record so far, behind one interface with two implementations.

``PythonChain`` is the reference (``hashlib`` and ``CompactTree``); ``NativeChain``
(``agent/native/hashchain.py``) keeps the same state in one C struct and adds the bulk paths
in C. ``new_chain`` chooses once, and the writer, the reopen scan and the verifier only hold a
``Chain``: the Python implementation of a bulk path takes nothing (``add_ordinary`` returns
where it started) or does the same work line by line (``add_lines``), so callers never branch.
Both produce the same hashes, roots and frontiers (``tests/unit/journal/test_chain.py``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

from agent import native
from agent.errors import JournalError
from agent.journal.durable import write_all
from agent.journal.merkle import CompactTree
from agent.journal.record import GENESIS_PREV, RECORD_PREFIX
from agent.journal.state import ChainState
from agent.native.hashchain import UNLIMITED, NativeChain

if TYPE_CHECKING:
    from agent.native.encoder import EventEncoder


class Chain(Protocol):
    """A journal's chain state (``ChainState`` holds it at rest: ``from_state``)."""

    #: ``add_events`` works (kernel events encoded in C straight into the chain).
    takes_events: bool

    @property
    def next_seq(self) -> int:
        """The seq the next record must carry (``size`` unless ``renumber``ed)."""

    @property
    def prev(self) -> str:
        """Hex hash of the last record (``GENESIS_PREV`` before the first)."""

    @property
    def size(self) -> int:
        """Records in the Merkle tree."""

    def root(self) -> bytes:
        """The Merkle tree's root (RFC 9162)."""

    def frontier(self) -> tuple[str, ...]:
        """Roots of the tree's perfect subtrees, largest first, hex (``ChainState.frontier``)."""

    def renumber(self, seq: int) -> None:
        """The next record is expected with ``seq`` (the verifier resynchronises after a gap)."""

    def add(self, line: bytes) -> None:
        """Chain one record line (without its newline): hash, tree leaf, prev, seq."""

    def write(self, fd: int, line: bytes) -> None:
        """Write ``line`` and its newline to ``fd``, then chain it. An OSError leaves the line
        maybe partly written and not chained."""

    def add_lines(self, content: bytes) -> int:
        """Chain every complete line of ``content``; returns the offset after the last one."""

    def add_ordinary(
        self, content: bytes, pos: int, host: str, boot_id: str, limit: int = UNLIMITED
    ) -> int:
        """Chain the run of ordinary records from ``pos`` (at most ``limit``), as the verifier's
        fast path judges them: canonical, in sequence, of ``host`` and ``boot_id``, events or
        verdicts; returns where the run stopped (``pos``: the next line needs the reference
        path)."""

    def add_events(
        self, encoder: EventEncoder, batch: bytes, pos: int, *, limit: int, fixed_ts: int
    ) -> int:
        """Encode and chain the run of kernel events ``encoder`` prepared; returns where it
        stopped (only where ``takes_events``)."""


class PythonChain:
    """The reference ``Chain``: ``hashlib`` and ``CompactTree``."""

    takes_events = False

    def __init__(self) -> None:
        self.next_seq = 0
        self.prev = GENESIS_PREV
        self._tree = CompactTree()
        self._sha256 = hashlib.sha256

    @classmethod
    def from_state(cls, state: ChainState) -> PythonChain:
        chain = cls()
        chain.next_seq = state.next_seq
        chain.prev = state.prev
        chain._tree = state.tree()
        return chain

    @property
    def size(self) -> int:
        return self._tree.size

    def root(self) -> bytes:
        return self._tree.root()

    def frontier(self) -> tuple[str, ...]:
        return tuple(node.hex() for node in self._tree.frontier)

    def renumber(self, seq: int) -> None:
        self.next_seq = seq

    def add(self, line: bytes) -> None:
        digest = self._sha256(RECORD_PREFIX + line).digest()
        self._tree.append(digest)
        self.prev = digest.hex()
        self.next_seq += 1

    def write(self, fd: int, line: bytes) -> None:
        write_all(fd, line + b"\n")
        self.add(line)

    def add_lines(self, content: bytes) -> int:
        pos, find, add = 0, content.find, self.add
        while (nl := find(b"\n", pos)) >= 0:
            add(content[pos:nl])
            pos = nl + 1
        return pos

    def add_ordinary(
        self, content: bytes, pos: int, host: str, boot_id: str, limit: int = UNLIMITED
    ) -> int:
        return pos  # no fast path: every line goes through the reference path

    def add_events(
        self, encoder: EventEncoder, batch: bytes, pos: int, *, limit: int, fixed_ts: int
    ) -> int:
        raise JournalError("the native core is not loaded: kernel events take the Python path")


def new_chain(state: ChainState | None = None, *, use_native: bool = True) -> Chain:
    """The chain, from ``state`` (None: an empty journal): in C where the native core is
    loaded and ``use_native`` (the same bytes either way), else in Python."""
    cls: type[NativeChain] | type[PythonChain] = (
        NativeChain if use_native and native.available() else PythonChain
    )
    return cls() if state is None else cls.from_state(state)
