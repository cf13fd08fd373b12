"""C2SP transparency-log formats, read from the specifications (github.com/C2SP/C2SP):
signed notes and verifier keys (``keys``, ``note``), tlog-checkpoint (``checkpoint``),
tlog-cosignature v1 (``keys.Cosigner``), tlog-policy (``policy``) and tlog-proof (``proof``).

Pure code: no IO. Merkle hashing and proofs are the journal's (``agent.journal.merkle``).
"""
