"""The journal's hash chain in C (``native/stjournal.c``): ``NativeChain``.

One ``struct st_chain`` holds the seq the next record carries, the hash of the last record and
the Merkle frontier, so every path that extends a chain extends the same struct without copying
state back and forth: lines the writer encodes in Python (``add``, ``write``), kernel events the
``EventEncoder`` encodes in C (``add_events``), a sealed segment hashed in bulk by the reopen
scan (``add_lines``), and runs of ordinary records taken by the verifier's fast path
(``add_ordinary``: ``st_verify_run`` takes a run of records that the reference verifier would
accept without a finding and stops at the first line it is unsure of, which then goes through
the reference path). ``agent.journal.chain`` chooses between this and the Python chain.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

import orjson

from agent.native import library
from agent.native.layout import StChain, StVerify

if TYPE_CHECKING:
    from agent.journal.state import ChainState
    from agent.native.encoder import EventEncoder

#: No limit on a run of ordinary records.
UNLIMITED = 1 << 62


class NativeChain:
    """A journal's chain state in one C struct (the ``agent.journal.chain.Chain`` protocol)."""

    takes_events = True

    def __init__(self) -> None:
        lib = library()
        self.state = StChain()
        self.ptr = ctypes.byref(self.state)
        self._add = lib.st_chain_add
        self._write = lib.st_chain_write
        self._lines = lib.st_chain_lines
        self._root = lib.st_tree_root
        self._hex = ctypes.create_string_buffer(64)
        self._prev: str | None = None  # hex of state.prev, while it is known
        self._verify: VerifyRun | None = None

    @classmethod
    def from_state(cls, state: ChainState) -> NativeChain:
        chain = cls()
        frontier = [bytes.fromhex(node) for node in state.frontier]
        chain.load(state.next_seq, bytes.fromhex(state.prev), state.next_seq, frontier)
        return chain

    def load(self, next_seq: int, prev: bytes, size: int, frontier: list[bytes]) -> None:
        """Take over a chain state (``from_state`` checked it)."""
        st = self.state
        st.next_seq = next_seq
        ctypes.memmove(st.prev, prev, 32)
        st.tree.size = size
        st.tree.frontier_len = len(frontier)
        for i, node in enumerate(frontier):
            ctypes.memmove(st.tree.frontier[i], node, 32)
        self._prev = None

    # ------------------------------------------------------------------------------ state
    @property
    def next_seq(self) -> int:
        return int(self.state.next_seq)

    @property
    def prev(self) -> str:
        if self._prev is None:
            self._prev = bytes(self.state.prev).hex()
        return self._prev

    @property
    def size(self) -> int:
        return int(self.state.tree.size)

    def root(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        self._root(ctypes.byref(self.state.tree), out)
        return out.raw

    def frontier(self) -> tuple[str, ...]:
        tree = self.state.tree
        return tuple(bytes(tree.frontier[i]).hex() for i in range(tree.frontier_len))

    def renumber(self, seq: int) -> None:
        self.state.next_seq = seq

    # ------------------------------------------------------------------------------ adding
    def add(self, line: bytes) -> None:
        self._add(self.ptr, line, len(line))
        self._prev = None

    def write(self, fd: int, line: bytes) -> None:
        err = self._write(self.ptr, fd, line, len(line), self._hex)
        if err:
            raise OSError(-err, os.strerror(-err))
        self._prev = self._hex.raw.decode("ascii")

    def add_lines(self, content: bytes) -> int:
        end = int(self._lines(self.ptr, content, len(content)))
        self._prev = None
        return end

    def add_ordinary(
        self, content: bytes, pos: int, host: str, boot_id: str, limit: int = UNLIMITED
    ) -> int:
        run = self.verify_run()
        run.set_identity(host, boot_id)
        end = run.run(content, pos, limit)
        self._prev = None
        return end

    def verify_run(self) -> VerifyRun:
        """The verifier fast path's state over this chain (``add_ordinary`` uses it)."""
        if self._verify is None:
            self._verify = VerifyRun(self)
        return self._verify

    def add_events(
        self, encoder: EventEncoder, batch: bytes, pos: int, *, limit: int, fixed_ts: int
    ) -> int:
        end = encoder.encode(self, batch, pos, limit=limit, fixed_ts=fixed_ts)
        self._prev = None
        return end


class VerifyRun:
    """The fast path's ``struct st_verify`` over one chain, with the identity it checks."""

    def __init__(self, chain: NativeChain) -> None:
        self._chain = chain  # keeps the struct alive: st_verify points into it
        self.state = StVerify()
        self.state.chain = ctypes.pointer(chain.state)
        self._ptr = ctypes.byref(self.state)
        self._run = library().st_verify_run
        self._ident: tuple[str, str] | None = None
        self._keep: tuple[bytes, bytes] = (b"", b"")

    def set_identity(self, host: str, boot_id: str) -> None:
        """The host and boot id every record of a run must carry."""
        if self._ident != (host, boot_id):
            self._ident = (host, boot_id)
            self.set_identity_json(orjson.dumps(host)[1:-1], orjson.dumps(boot_id)[1:-1])

    def set_identity_json(self, host: bytes, boot: bytes) -> None:
        """The same as canonical JSON content without the quotes."""
        self._keep = (host, boot)  # kept referenced while the struct points at them
        st = self.state
        st.host, st.host_len = host, len(host)
        st.boot, st.boot_len = boot, len(boot)

    def run(self, content: bytes, pos: int, limit: int) -> int:
        """Take ordinary records from ``content[pos:]`` into the chain (at most ``limit``);
        returns where it stopped (``state.taken`` records, the last at ``state.last_offset``)."""
        self.state.limit = limit
        return int(self._run(self._ptr, content, len(content), pos))
