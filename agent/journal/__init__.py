"""The tamper-evident journal: records -> hash chain -> Merkle tree -> signed seals -> segments.

Data flow, one module per step: ``canonical`` (bytes of a value) -> ``record`` (record model,
record hash) -> ``merkle`` (tree, proofs) -> ``keys`` (Ed25519 genesis and epoch keys) ->
``checkpoint`` (signed checkpoints, exported proofs) -> ``writer`` (segments, seals, rotation,
recovery; ``protect`` sets the inode flags) -> ``segments`` (reading) -> ``verify`` (pure checks).
The byte-level format is docs/journal-format.md.
"""

from agent.journal.writer import JournalWriter, Recovery

__all__ = ["JournalWriter", "Recovery"]
