"""RFC 6962/9162 Merkle tree: incremental roots, inclusion and consistency proofs."""

from __future__ import annotations

import hashlib

import pytest

from agent.errors import FormatError
from agent.journal import merkle


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]


def test_known_rfc6962_empty_and_single() -> None:
    assert merkle.CompactTree().root().hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    tree = merkle.CompactTree()
    tree.append(b"")
    # RFC 6962 test vector: the leaf hash of the empty string.
    assert tree.root().hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_compact_tree_matches_recursive_definition() -> None:
    tree = merkle.CompactTree()
    for n in range(1, 130):
        tree.append(hashlib.sha256(str(n - 1).encode()).digest())
        assert tree.root() == merkle.subtree_root(leaves(n))


def test_inclusion_proofs_for_every_leaf() -> None:
    for n in (1, 2, 3, 5, 8, 13, 64, 100):
        ls = leaves(n)
        root = merkle.subtree_root(ls)
        for i in range(n):
            path = merkle.inclusion_proof(i, ls)
            assert merkle.root_from_inclusion(i, n, ls[i], path) == root
            if path:
                bad = [path[0][:-1] + bytes([path[0][-1] ^ 1]), *path[1:]]
                assert merkle.root_from_inclusion(i, n, ls[i], bad) != root
                with pytest.raises(FormatError):
                    merkle.root_from_inclusion(i, n, ls[i], path[:-1])
            with pytest.raises(FormatError):
                merkle.root_from_inclusion(i, n, ls[i], [*path, root])


def test_consistency_proofs_between_all_sizes() -> None:
    ls = leaves(40)
    for new in range(1, 41):
        new_root = merkle.subtree_root(ls[:new])
        for old in range(1, new + 1):
            old_root = merkle.subtree_root(ls[:old])
            proof = merkle.consistency_proof(old, ls[:new])
            merkle.verify_consistency(old, new, old_root, new_root, proof)
            if old < new:
                with pytest.raises(FormatError):
                    merkle.verify_consistency(old, new, new_root, new_root, proof)
                forked = merkle.subtree_root([*ls[: old - 1], leaves(41)[40]])
                with pytest.raises(FormatError):
                    merkle.verify_consistency(old, new, forked, new_root, proof)
