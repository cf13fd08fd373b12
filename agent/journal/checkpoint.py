"""Signed checkpoints, key rotation signatures, and the exported checkpoint and proof files.

A checkpoint states "the journal of HOST had SIZE records, whose Merkle root is ROOT and whose
last record hashes to LAST, at time TS", signed by the epoch key KEY_ID. ``seal`` records carry
one; ``sealtrail journal checkpoint`` exports the latest with the rotation records that lead from
the genesis key to its signer, so it can be checked with ``journal.pub`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import FormatError
from agent.journal import merkle
from agent.journal.canonical import JsonValue, canonical
from agent.journal.keys import PublicKey, b64, unb64
from agent.journal.record import Record, is_hex64, parse_line, record_hash

CHECKPOINT_PREFIX = b"sealtrail/checkpoint/v1\x00"
ROTATION_PREFIX = b"sealtrail/rotation/v1\x00"
CHECKPOINT_FORMAT = "sealtrail-checkpoint/v1"
PROOF_FORMAT = "sealtrail-inclusion-proof/v1"


@dataclass(frozen=True)
class Checkpoint:
    host: str
    size: int
    root: str
    last: str
    ts: int
    key_id: str

    def __post_init__(self) -> None:
        if type(self.size) is not int or self.size < 1:
            raise FormatError(f"checkpoint size must be a positive integer, got {self.size!r}")
        for name in ("root", "last"):
            if not is_hex64(getattr(self, name)):
                raise FormatError(f"checkpoint {name} must be 64 lowercase hex digits")
        if not isinstance(self.host, str) or not self.host:
            raise FormatError("checkpoint host must be a non-empty string")
        if not isinstance(self.key_id, str) or len(self.key_id) != 32:
            raise FormatError("checkpoint key_id must be 32 hex digits")

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "host": self.host,
            "key_id": self.key_id,
            "last": self.last,
            "root": self.root,
            "size": self.size,
            "ts": str(self.ts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        try:
            ts = data["ts"]
            if not isinstance(ts, str) or not ts.isdigit():
                raise FormatError(f"checkpoint ts must be a decimal string, got {ts!r}")
            return cls(
                data["host"], data["size"], data["root"], data["last"], int(ts), data["key_id"]
            )
        except KeyError as exc:
            raise FormatError(f"checkpoint lacks field {exc.args[0]!r}") from None

    def signing_input(self) -> bytes:
        return CHECKPOINT_PREFIX + canonical(self.to_dict())

    @classmethod
    def from_seal(cls, seal: Record) -> tuple[Checkpoint, bytes]:
        """The checkpoint a seal record signs, and its signature."""
        f = seal.fields
        sig = f["sig"]
        if not isinstance(sig, str):
            raise FormatError("seal sig must be a base64 string")
        root, size, kid = f["root"], f["size"], f["key_id"]
        if not isinstance(root, str) or not isinstance(kid, str) or type(size) is not int:
            raise FormatError("seal size/root/key_id have the wrong types")
        return cls(seal.host, size, root, seal.prev, seal.ts, kid), unb64(sig, "seal sig")


def rotation_signing_input(rotation: Mapping[str, JsonValue]) -> bytes:
    """What the old key signs: the whole rotation record except ``sig``."""
    return ROTATION_PREFIX + canonical({k: v for k, v in rotation.items() if k != "sig"})


def follow_rotation(current: PublicKey, rotation: Record) -> PublicKey:
    """Check one key_rotation record against the current key; return the next key."""
    f = rotation.fields
    if f["old_key_id"] != current.key_id:
        raise FormatError(
            f"rotation names old key {f['old_key_id']} but the current key is {current.key_id}"
        )
    new_key, new_id, sig = f["new_key"], f["new_key_id"], f["sig"]
    if not isinstance(new_key, str) or not isinstance(sig, str):
        raise FormatError("rotation new_key and sig must be base64 strings")
    nxt = PublicKey(unb64(new_key, "rotation new_key"))
    if nxt.key_id != new_id:
        raise FormatError(f"rotation new_key_id {new_id} does not match the key ({nxt.key_id})")
    if not current.verify(unb64(sig, "rotation sig"), rotation_signing_input(rotation.to_dict())):
        raise FormatError(f"rotation not signed by the current epoch key {current.key_id}")
    return nxt


@dataclass(frozen=True)
class Tail:
    """Unsigned observation at export time: records after the checkpoint that were present."""

    count: int
    last_seq: int
    last_hash: str

    def to_dict(self) -> dict[str, JsonValue]:
        return {"count": self.count, "last_hash": self.last_hash, "last_seq": self.last_seq}


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    sig: bytes
    seal_seq: int
    rotations: tuple[Record, ...] = ()
    tail: Tail | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "format": CHECKPOINT_FORMAT,
            "checkpoint": self.checkpoint.to_dict(),
            "sig": b64(self.sig),
            "seal_seq": self.seal_seq,
            "rotations": [r.to_dict() for r in self.rotations],
        }
        if self.tail is not None:
            out["tail"] = self.tail.to_dict()
        return out

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedCheckpoint:
        if not isinstance(data, Mapping) or data.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(f"not a {CHECKPOINT_FORMAT} document")
        try:
            tail = data.get("tail")
            return cls(
                checkpoint=Checkpoint.from_dict(data["checkpoint"]),
                sig=unb64(data["sig"], "checkpoint sig"),
                seal_seq=int(data["seal_seq"]),
                rotations=tuple(Record.from_dict(r) for r in data["rotations"]),
                tail=Tail(int(tail["count"]), int(tail["last_seq"]), str(tail["last_hash"]))
                if tail
                else None,
            )
        except (KeyError, TypeError) as exc:
            raise FormatError(f"malformed checkpoint document: {exc}") from None

    def verify(self, genesis: PublicKey) -> PublicKey:
        """Follow the rotations from ``genesis`` and check the signature; return the signer."""
        key = genesis
        for rotation in self.rotations:
            if rotation.type != "key_rotation" or rotation.host != self.checkpoint.host:
                raise FormatError(f"record {rotation.seq} in the checkpoint is not a rotation")
            key = follow_rotation(key, rotation)
        if key.key_id != self.checkpoint.key_id:
            raise FormatError(
                f"checkpoint signed by key {self.checkpoint.key_id}, which is not in the "
                f"rotation chain from genesis key {genesis.key_id}"
            )
        if not key.verify(self.sig, self.checkpoint.signing_input()):
            raise FormatError("checkpoint signature is not valid")
        return key


@dataclass(frozen=True)
class InclusionProof:
    checkpoint: SignedCheckpoint
    seq: int
    record: bytes
    path: tuple[bytes, ...]

    def to_dict(self) -> dict[str, JsonValue]:
        cp = self.checkpoint
        return {
            "format": PROOF_FORMAT,
            "checkpoint": SignedCheckpoint(
                cp.checkpoint, cp.sig, cp.seal_seq, cp.rotations
            ).to_dict(),
            "seq": self.seq,
            "record": self.record.decode("utf-8"),
            "path": [p.hex() for p in self.path],
        }

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InclusionProof:
        if not isinstance(data, Mapping) or data.get("format") != PROOF_FORMAT:
            raise FormatError(f"not a {PROOF_FORMAT} document")
        try:
            return cls(
                checkpoint=SignedCheckpoint.from_dict(data["checkpoint"]),
                seq=int(data["seq"]),
                record=str(data["record"]).encode("utf-8"),
                path=tuple(bytes.fromhex(p) for p in data["path"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed proof document: {exc}") from None

    def verify(self, genesis: PublicKey) -> Record:
        """Check the checkpoint with ``genesis`` and the record's inclusion; return the record."""
        self.checkpoint.verify(genesis)
        record = parse_line(self.record)
        cp = self.checkpoint.checkpoint
        if record.seq != self.seq:
            raise FormatError(f"proof is for seq {self.seq} but the record has seq {record.seq}")
        if record.host != cp.host:
            raise FormatError(f"record host {record.host} is not the checkpoint host {cp.host}")
        leaf = merkle.leaf_hash(record_hash(self.record))
        root = merkle.root_from_inclusion(self.seq, cp.size, leaf, self.path)
        if root.hex() != cp.root:
            raise FormatError(
                f"record {self.seq} is not included in the checkpoint of size "
                f"{cp.size}: the proof leads to a different root"
            )
        return record


def rotations_of(records: Iterable[Record]) -> tuple[Record, ...]:
    return tuple(r for r in records if r.type == "key_rotation")
