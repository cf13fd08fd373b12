"""The latest fleet checkpoint that covers this host, as the collector's answers carry it.

With each accepted batch the collector may send ``"fleet": {"checkpoint": <signed note>,
"index": I, "host_size": N}``: its latest witnessed fleet checkpoint, and that entry I of it is
this host's checkpoint of N records. The forwarder checks the collector's signature on the note
(the key it checks receipts with, as a signed-note key named after the collector) and keeps the
largest one in ``fleet-checkpoint`` beside its status file (written whole: temporary file,
rename; no fsync: the run directory does not outlive a reboot, and the journal's
``fleet_checkpoint`` records keep it durably), so the host holds the collector's witnessed
word that its records 0..N-1 are in the fleet's history. The witnesses' cosignatures ride
along in the note; the host does not judge them (it has no witness policy):
``sealtrail verify-bundle`` does, with the policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import ED25519, NoteError, VerifierKey
from agent.c2sp.note import Note
from agent.errors import FormatError
from agent.journal.keys import PublicKey

FILE = "fleet-checkpoint"


@dataclass(frozen=True)
class FleetNote:
    note: bytes
    size: int
    index: int
    host_size: int


def check(doc: object, collector: str, key: PublicKey) -> FleetNote:
    """The collector's ``fleet`` answer, checked; FormatError says what is wrong."""
    if not isinstance(doc, Mapping) or set(doc) != {"checkpoint", "index", "host_size"}:
        raise FormatError("the fleet answer has exactly checkpoint, index and host_size")
    text, index, host_size = doc["checkpoint"], doc["index"], doc["host_size"]
    if not isinstance(text, str) or type(index) is not int or type(host_size) is not int:
        raise FormatError("the fleet answer's fields have the wrong types")
    try:
        note = Note.parse(text.encode("utf-8"))
        note.open([VerifierKey(collector, ED25519, key.raw)])
        cp = Checkpoint.parse(note.text)
    except NoteError as exc:
        raise FormatError(f"the fleet checkpoint: {exc}") from None
    if cp.origin != collector:
        raise FormatError(f"the fleet checkpoint is of {cp.origin!r}, not of {collector!r}")
    if not 0 <= index < cp.size or host_size < 1:
        raise FormatError(f"entry {index} is not in a fleet checkpoint of size {cp.size}")
    return FleetNote(note.to_bytes(), cp.size, index, host_size)


def keep(directory: Path, fleet: FleetNote) -> None:
    path = directory / FILE
    tmp = directory / f".{FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, fleet.note)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # a reader sees the old note or the new one, whole
