"""Reading a journal directory: records for ``tail``, the latest checkpoint, inclusion proofs.

IO only; nothing here decides whether the journal is authentic (that is ``verify``), so the
documents produced are checked by whoever receives them, with the genesis public key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agent.errors import FormatError, JournalError
from agent.journal import merkle
from agent.journal.checkpoint import Checkpoint, InclusionProof, SignedCheckpoint, Tail
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


def latest_checkpoint(directory: Path) -> tuple[SignedCheckpoint, list[bytes]]:
    """The last seal as an exportable checkpoint, and the record hashes up to it (for proofs)."""
    hashes: list[bytes] = []
    rotations: list[Record] = []
    last: tuple[SignedCheckpoint, int] | None = None
    for line, record in iter_records(directory):
        hashes.append(record_hash(line.data))
        if record is None:
            continue
        if record.type == "key_rotation":
            rotations.append(record)
        elif record.type == "seal":
            checkpoint, sig = Checkpoint.from_seal(record)
            last = (SignedCheckpoint(checkpoint, sig, record.seq, tuple(rotations)), len(hashes))
    if last is None:
        raise JournalError(f"no seal in the journal at {directory}")
    signed, upto = last
    after = hashes[upto:]
    if after:
        tail = Tail(len(after), upto + len(after) - 1, after[-1].hex())
        signed = SignedCheckpoint(
            signed.checkpoint, signed.sig, signed.seal_seq, signed.rotations, tail
        )
    return signed, hashes


def prove(directory: Path, seq: int) -> InclusionProof:
    """Inclusion proof of record ``seq`` against the latest checkpoint."""
    signed, hashes = latest_checkpoint(directory)
    size = signed.checkpoint.size
    if not 0 <= seq < size:
        raise JournalError(
            f"record {seq} is not covered by the latest checkpoint (records 0\u2013{size - 1})"
        )
    leaves = [merkle.leaf_hash(h) for h in hashes[:size]]
    line = next(ln for i, (ln, _) in enumerate(iter_records(directory)) if i == seq)
    return InclusionProof(signed, seq, line.data, tuple(merkle.inclusion_proof(seq, leaves)))
