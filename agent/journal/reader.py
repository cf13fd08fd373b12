"""Reading a journal directory: records for ``tail``, the latest checkpoint, inclusion proofs,
and where the journal ends (``sealtrail status``).

IO only; nothing here decides whether the journal is authentic (that is ``verify``), so the
documents produced are checked by whoever receives them, with the genesis public key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
from agent.journal.segments import Line, iter_lines, list_segments


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


class JournalEnd(NamedTuple):
    """The journal's last complete record and its last seal (None where there is none)."""

    last: Record | None
    seal: Record | None


def journal_end(directory: Path, block: int = 1 << 16) -> JournalEnd:
    """Read from the end of the last segments back to the last seal: a running agent seals
    every few hundred milliseconds (and every segment but the live one ends with a seal), so
    this reads a few blocks, not the journal. Lines that are not records are passed over."""
    last: Record | None = None
    for _, path in reversed(list_segments(directory)):
        for data in _lines_backward(path, block):
            try:
                record = parse_line(data)
            except FormatError:
                continue
            last = last or record
            if record.type == "seal":
                return JournalEnd(last, record)
    return JournalEnd(last, None)


def _lines_backward(path: Path, block: int) -> Iterator[bytes]:
    """The complete lines of a file, last first (a partial last line left out)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, while the generator is consumed
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        end = f.seek(0, 2)
        head = b""  # the start of a line whose beginning is not read yet
        complete = False  # a newline follows ``head``
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            parts = (f.read(end - start) + head).split(b"\n")
            end = start
            head, tail = parts[0], parts[1:]
            if not complete:
                if not tail:
                    continue
                tail = tail[:-1]  # after the last newline: a partial line or nothing
                complete = True
            yield from reversed(tail)
        if complete and head:
            yield head
