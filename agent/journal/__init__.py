"""The tamper-evident journal: records -> hash chain -> Merkle tree -> signed seals -> segments.

Data flow, one module per step: ``canonical`` (bytes of a value) -> ``record`` (record model,
record hash) -> ``merkle`` (tree, proofs) -> ``keys`` (Ed25519 genesis and epoch keys) ->
``checkpoint`` (signed checkpoints, exported proofs) -> ``chain`` (seq, last hash, tree: in
Python or in the native core) -> ``writer`` (append, seals, key and segment rotation; ``live``
the live segment, ``recover`` the reopen scan and torn-tail cut, ``protect`` the inode flags)
-> ``segments`` (reading) -> ``verify`` (pure checks).
The byte-level format is docs/journal-format.md.
"""

from agent.journal.writer import JournalWriter, Recovery

__all__ = ["JournalWriter", "Recovery"]
