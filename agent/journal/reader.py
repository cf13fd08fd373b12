"""Reading a journal directory: records for ``tail``, the latest checkpoint, inclusion proofs.

IO only; nothing here decides whether the journal is authentic (that is ``verify``), so the
documents produced are checked by whoever receives them, with the genesis public key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agent.errors import FormatError, JournalError
from agent.journal import merkle
from agent.journal.checkpoint import (
    Checkpoint,
    ConsistencyProof,
    InclusionProof,
    SignedCheckpoint,
    Tail,
)
from agent.journal.record import Record, parse_line, record_hash
from agent.journal.segments import Line, iter_lines


def iter_records(directory: Path) -> Iterator[tuple[Line, Record | None]]:
    """Every complete line with its record (None where the line is not a valid record)."""
    for line in iter_lines(directory):
        if not line.complete:
            continue
        try:
            yield line, parse_line(line.data)
        except FormatError:
            yield line, None


def _hashes(directory: Path) -> Iterator[bytes]:
    """The record hash of every complete line, in order (the Merkle tree's leaves)."""
    for line in iter_lines(directory):
        if line.complete:
            yield record_hash(line.data)


def latest_checkpoint(directory: Path) -> SignedCheckpoint:
    """The last seal as an exportable checkpoint, with the tail of records after it."""
    rotations: list[Record] = []
    last: SignedCheckpoint | None = None
    count = upto = 0
    last_hash = b""
    for line, record in iter_records(directory):
        count += 1
        last_hash = record_hash(line.data)
        if record is None:
            continue
        if record.type == "key_rotation":
            rotations.append(record)
        elif record.type == "seal":
            checkpoint, sig = Checkpoint.from_seal(record)
            last = SignedCheckpoint(checkpoint, sig, record.seq, tuple(rotations))
            upto = count
    if last is None:
        raise JournalError(f"no seal in the journal at {directory}")
    after = count - upto
    if after:
        tail = Tail(after, last.seal_seq + after, last_hash.hex())
        last = SignedCheckpoint(last.checkpoint, last.sig, last.seal_seq, last.rotations, tail)
    return last


def prove(directory: Path, seq: int) -> InclusionProof:
    """Inclusion proof of record ``seq`` against the latest checkpoint (reads the journal
    twice, keeps O(log n) hashes)."""
    signed = latest_checkpoint(directory)
    size = signed.checkpoint.size
    if not 0 <= seq < size:
        raise JournalError(
            f"record {seq} is not covered by the latest checkpoint (records 0\u2013{size - 1})"
        )
    path = merkle.stream_inclusion_proof(seq, size, _hashes(directory))
    line = next(ln for i, (ln, _) in enumerate(iter_records(directory)) if i == seq)
    return InclusionProof(signed, seq, line.data, tuple(path))


def prove_consistency(directory: Path, old: SignedCheckpoint) -> ConsistencyProof:
    """Proof that the latest checkpoint extends ``old`` (exported earlier from this journal)."""
    new = latest_checkpoint(directory)
    new = SignedCheckpoint(new.checkpoint, new.sig, new.seal_seq, new.rotations)
    old_size, size = old.checkpoint.size, new.checkpoint.size
    if old.checkpoint.host != new.checkpoint.host:
        raise JournalError(
            f"the checkpoint is of host {old.checkpoint.host!r}, this journal of "
            f"{new.checkpoint.host!r}"
        )
    if old_size > size:
        raise JournalError(
            f"the checkpoint covers {old_size} records, the journal's latest seal only {size}: "
            "truncated, or not this journal"
        )
    path = merkle.stream_consistency_proof(old_size, size, _hashes(directory))
    return ConsistencyProof(old, new, tuple(path))
