"""Evidence bundles: one record, proven all the way to a witnessed fleet checkpoint, checked
offline (``sealtrail verify-bundle``; made by ``sealtrail collector prove``).

A bundle is a C2SP tlog-proof (c2sp.org/tlog-proof@v1) of one fleet-log entry, whose ``extra``
line carries the host's own inclusion proof (the journal's ``sealtrail-inclusion-proof/v1``
document, canonical JSON): the record, its Merkle path in the host's journal, and the host
checkpoint it leads to, signed by the host's epoch key with the rotations from its genesis key.
The fleet entry is computed from that host checkpoint, never read from the bundle, so the
bundle proves: the host signed a checkpoint that holds the record; the collector put that
checkpoint in its fleet log at ``index``; the collector signed the fleet checkpoint; and a
quorum of the policy's witnesses cosigned it, each having checked it consistent with every
fleet checkpoint it cosigned before.

The bundle's text is checked strictly so that no byte of it is left unchecked: base64 and
JSON must be in their one canonical form, and every signature line must be by a key of the
policy (a bundle is made for the policy it is verified with).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import NoteError
from agent.c2sp.policy import Policy
from agent.c2sp.proof import TlogProof
from agent.errors import FormatError
from agent.journal import merkle
from agent.journal.canonical import canonical, load_json
from agent.journal.checkpoint import Checkpoint as HostCheckpoint
from agent.journal.checkpoint import InclusionProof
from agent.journal.keys import PublicKey, b64, unb64
from agent.journal.record import Record

ENTRY_FORMAT = "sealtrail-fleet-entry/v1"


class BundleError(FormatError):
    """An evidence bundle does not prove what it claims; the message says which step fails."""


def entry_bytes(checkpoint: HostCheckpoint, sig: bytes) -> bytes:
    """The fleet-log entry of one accepted host checkpoint (canonical JSON)."""
    return canonical({"format": ENTRY_FORMAT, "checkpoint": checkpoint.to_dict(), "sig": b64(sig)})


def parse_entry(entry: bytes) -> tuple[HostCheckpoint, bytes]:
    """The host checkpoint and seal signature an entry holds; FormatError if it is not one."""
    try:
        doc = load_json(entry)
    except FormatError:
        raise FormatError("a fleet entry is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "checkpoint", "sig"}:
        raise FormatError("a fleet entry has exactly format, checkpoint and sig")
    if doc["format"] != ENTRY_FORMAT or not isinstance(doc["sig"], str):
        raise FormatError(f"not a {ENTRY_FORMAT} entry")
    checkpoint = HostCheckpoint.from_dict(doc["checkpoint"])
    sig = unb64(doc["sig"], "fleet entry sig")
    if entry_bytes(checkpoint, sig) != entry:
        raise FormatError("a fleet entry is not in canonical form")
    return checkpoint, sig


@dataclass(frozen=True)
class Evidence:
    record: Record
    host_size: int
    index: int
    fleet: Checkpoint
    cosigners: tuple[str, ...]


def make_bundle(host_proof: InclusionProof, index: int, path: list[bytes], note: bytes) -> bytes:
    from agent.c2sp.note import Note

    extra = canonical(host_proof.to_dict())
    return TlogProof(index, tuple(path), Note.parse(note), extra).to_bytes()


def verify_bundle(data: bytes, host_key: PublicKey, policy: Policy) -> Evidence:
    """Check every step of a bundle offline; BundleError names the first that fails."""
    try:
        proof = TlogProof.parse(data)
    except NoteError as exc:
        raise BundleError(f"bundle: {exc}") from None
    if proof.extra is None:
        raise BundleError("bundle: no 'extra' line: the host's inclusion proof is missing")
    try:
        doc = load_json(proof.extra)
    except FormatError as exc:
        raise BundleError(f"bundle: the host proof (extra) is {exc}") from None
    try:
        host_proof = InclusionProof.from_dict(doc)
    except FormatError as exc:
        raise BundleError(f"bundle: host proof: {exc}") from None
    if canonical(host_proof.to_dict()) != proof.extra:
        raise BundleError("bundle: the host proof (extra) is not in canonical JSON form")
    try:
        record = host_proof.verify(host_key)
    except FormatError as exc:
        raise BundleError(f"bundle: host proof: {exc}") from None
    signed = host_proof.checkpoint
    entry = entry_bytes(signed.checkpoint, signed.sig)
    try:
        fleet = Checkpoint.parse(proof.note.text)
    except NoteError as exc:
        raise BundleError(f"bundle: fleet checkpoint: {exc}") from None
    known = {(k.name, k.key_id) for k in (*policy.logs, *policy.witness_keys())}
    for n, sig in enumerate(proof.note.signatures, 1):
        if (sig.name, sig.key_id) not in known:
            raise BundleError(
                f"bundle: fleet checkpoint signature {n} is by {sig.name} "
                f"(key id {sig.key_id.hex()}), a key the policy does not list"
            )
    try:
        cosigners, _ = policy.verify_checkpoint(proof.note, fleet.origin)
    except NoteError as exc:
        raise BundleError(f"bundle: fleet checkpoint: {exc}") from None
    try:
        root = merkle.root_from_inclusion(
            proof.index, fleet.size, merkle.leaf_hash(entry), proof.path
        )
    except FormatError as exc:
        raise BundleError(f"bundle: fleet inclusion proof: {exc}") from None
    if root != fleet.root:
        raise BundleError(
            f"bundle: the host checkpoint of size {signed.checkpoint.size} is not entry "
            f"{proof.index} of the fleet checkpoint of size {fleet.size}: the proof leads to "
            "another root"
        )
    return Evidence(record, signed.checkpoint.size, proof.index, fleet, tuple(sorted(cosigners)))
