"""RFC 6962 / RFC 9162 Merkle tree hashing, an incremental tree, and proofs.

Leaves are record hashes: ``leaf = SHA-256(0x00 || record_hash)``, nodes
``SHA-256(0x01 || left || right)``, the empty tree hashes to ``SHA-256("")`` (RFC 9162 2.1.1).

Written here rather than taken from ``pymerkle`` (7.0.0, evaluated): pymerkle keeps every leaf in
its own storage backend (in-memory or SQLite) and recomputes subtree roots through a cache,
while the writer and the streaming verifier need only an O(log n) frontier ("compact range") and
never all leaves; its API broke between majors (5 -> 6 -> 7), and this whole module is ~150 lines
checked against the RFC algorithms by the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from agent.errors import FormatError

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactTree:
    """Append-only tree that keeps only the roots of its perfect subtrees (the frontier).

    ``append`` is amortised O(1), worst case O(log n); ``root`` is O(log n).
    """

    __slots__ = ("_frontier", "size")

    def __init__(self) -> None:
        self._frontier: list[bytes] = []  # roots of perfect subtrees, largest first
        self.size = 0

    def append(self, data: bytes) -> None:
        """Add one leaf whose data is ``data`` (a record hash)."""
        node = hashlib.sha256(b"\x00" + data).digest()
        size = self.size
        frontier = self._frontier
        while size & 1:
            node = hashlib.sha256(b"\x01" + frontier.pop() + node).digest()
            size >>= 1
        frontier.append(node)
        self.size += 1

    @property
    def frontier(self) -> list[bytes]:
        """Roots of the perfect subtrees, largest first (a copy)."""
        return list(self._frontier)

    def restore(self, size: int, frontier: list[bytes]) -> None:
        """Take over a tree state computed elsewhere (the native verifier's)."""
        if len(frontier) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} has {bin(size).count('1')} subtrees")
        self.size = size
        self._frontier = list(frontier)

    def root(self) -> bytes:
        if not self._frontier:
            return EMPTY_ROOT
        node = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            node = node_hash(left, node)
        return node


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(leaves: Sequence[bytes]) -> bytes:
    """MTH over already leaf-hashed entries."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _largest_power_of_two_below(n)
    return node_hash(subtree_root(leaves[:k]), subtree_root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1; ``leaves`` are leaf hashes."""
    n = len(leaves)
    if not 0 <= index < n:
        raise FormatError(f"leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), subtree_root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), subtree_root(leaves[:k])]


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root ``path`` proves for leaf hash ``leaf``; raise if malformed."""
    if not 0 <= index < size:
        raise FormatError(f"leaf {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    node = leaf
    for sibling in path:
        if sn == 0:
            raise FormatError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise FormatError("inclusion proof is shorter than the tree is deep")
    return node


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise FormatError(f"no consistency proof from size {old_size} to size {n}")
    return _subproof(old_size, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [subtree_root(leaves)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), subtree_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), subtree_root(leaves[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: raise FormatError unless ``proof`` shows new extends old."""
    if not 0 < old_size <= new_size:
        raise FormatError(f"no consistency between sizes {old_size} and {new_size}")
    if old_size == new_size:
        if proof:
            raise FormatError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise FormatError("roots differ at equal size")
        return
    if not proof:
        raise FormatError("empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise FormatError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise FormatError("consistency proof is too short")
    if fr != old_root:
        raise FormatError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise FormatError("consistency proof does not lead to the new root")


# --------------------------------------------------------------------- proofs from a stream
# The proofs above take every leaf in memory (fine for tests and small trees). A journal or a
# collector's store holds millions of records: these build the same proofs from the record
# hashes read once, in order, keeping O(log n) nodes. The nodes a proof needs are the roots of
# disjoint ranges of leaves, known from the sizes alone; one pass feeds each range's tree.


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PATH(index, D[size]), in proof order."""
    if not 0 <= index < size:
        raise FormatError(f"leaf {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index - lo < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PROOF(old_size, D[size]), in proof order."""
    if not 0 < old_size <= size:
        raise FormatError(f"no consistency proof from size {old_size} to size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                ranges.append((lo, hi))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    ranges.reverse()
    return ranges


def range_roots(ranges: Sequence[tuple[int, int]], hashes: Iterable[bytes]) -> list[bytes]:
    """The roots of disjoint leaf ``ranges`` from record ``hashes`` 0, 1, ... read once.

    ``hashes`` may stop after the last range; it must not stop before it.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    roots: list[bytes] = [b""] * len(ranges)
    it = iter(hashes)
    pos = 0
    for i in order:
        lo, hi = ranges[i]
        if lo < pos:
            raise ValueError("proof ranges overlap")
        for _ in range(lo - pos):
            if next(it, None) is None:
                raise FormatError(f"the tree ends before leaf {lo}")
        tree = CompactTree()
        for _ in range(hi - lo):
            data = next(it, None)
            if data is None:
                raise FormatError(f"the tree ends before leaf {hi - 1}")
            tree.append(data)
        roots[i] = tree.root()
        pos = hi
    return roots


def stream_inclusion_proof(index: int, size: int, hashes: Iterable[bytes]) -> list[bytes]:
    """``inclusion_proof`` from record hashes read once (``hashes``: record hashes from 0)."""
    return range_roots(inclusion_ranges(index, size), hashes)


def stream_consistency_proof(old_size: int, size: int, hashes: Iterable[bytes]) -> list[bytes]:
    """``consistency_proof`` from record hashes read once."""
    return range_roots(consistency_ranges(old_size, size), hashes)
