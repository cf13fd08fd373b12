"""Signed checkpoints, key rotation signatures, and the exported checkpoint and proof files.

A checkpoint states "the journal of HOST had SIZE records, whose Merkle root is ROOT and whose
last record hashes to LAST, at time TS", signed by the epoch key KEY_ID. ``seal`` records carry
one; ``sealtrail journal checkpoint`` exports the latest with the rotation records that lead from
the genesis key to its signer, so it can be checked with ``journal.pub`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import FormatError
from agent.journal import merkle
from agent.journal.canonical import MAX_SAFE_INT, JsonValue, canonical
from agent.journal.keys import PublicKey, b64, unb64
from agent.journal.record import Record, is_hex64, parse_line, parse_ts, record_hash

CHECKPOINT_PREFIX = b"sealtrail/checkpoint/v1\x00"
ROTATION_PREFIX = b"sealtrail/rotation/v1\x00"
CHECKPOINT_FORMAT = "sealtrail-checkpoint/v1"
PROOF_FORMAT = "sealtrail-inclusion-proof/v1"
CONSISTENCY_FORMAT = "sealtrail-consistency-proof/v1"
_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_CHECKPOINT_FIELDS = frozenset({"host", "key_id", "last", "root", "size", "ts"})
_SIGNED_FIELDS = frozenset({"format", "checkpoint", "sig", "seal_seq", "rotations"})
#: A proof path longer than this is not of a tree JSON could count (2**53 leaves).
MAX_PATH = 2 * 53


def _require(data: object, what: str, fields: frozenset[str]) -> Mapping[str, Any]:
    """``data`` as a JSON object with exactly ``fields`` (names the first missing/unknown)."""
    if not isinstance(data, Mapping):
        raise FormatError(f"{what} must be a JSON object")
    missing = sorted(fields - set(data))
    if missing:
        raise FormatError(f"{what} lacks field {missing[0]!r}")
    unknown = sorted(str(k) for k in set(data) - fields)
    if unknown:
        raise FormatError(f"{what} has unknown field {unknown[0]!r}")
    return data


def _count(value: object, what: str, low: int = 0) -> int:
    """An integer field (no bool, no string: ``"7"`` is an error, not 7)."""
    if type(value) is not int or not low <= value <= MAX_SAFE_INT:
        raise FormatError(f"{what} must be an integer from {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class Checkpoint:
    host: str
    size: int
    root: str
    last: str
    ts: int
    key_id: str

    def __post_init__(self) -> None:
        _count(self.size, "checkpoint size", 1)
        for name in ("root", "last"):
            if not is_hex64(getattr(self, name)):
                raise FormatError(f"checkpoint {name} must be 64 lowercase hex digits")
        if not isinstance(self.host, str) or not self.host:
            raise FormatError("checkpoint host must be a non-empty string")
        if type(self.ts) is not int or not 0 <= self.ts < 1 << 64:
            raise FormatError(f"checkpoint ts must be a time in ns, got {self.ts!r}")
        if not isinstance(self.key_id, str) or _HEX32(self.key_id) is None:
            raise FormatError("checkpoint key_id must be 32 lowercase hex digits")

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
        d = _require(data, "checkpoint", _CHECKPOINT_FIELDS)
        try:
            ts = parse_ts(d["ts"])
        except FormatError as exc:
            raise FormatError(f"checkpoint {exc}") from None
        return cls(d["host"], d["size"], d["root"], d["last"], ts, d["key_id"])

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

    def __post_init__(self) -> None:
        _count(self.count, "checkpoint tail count", 1)
        _count(self.last_seq, "checkpoint tail last_seq", 1)
        if not is_hex64(self.last_hash):
            raise FormatError("checkpoint tail last_hash must be 64 lowercase hex digits")

    def to_dict(self) -> dict[str, JsonValue]:
        return {"count": self.count, "last_hash": self.last_hash, "last_seq": self.last_seq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tail:
        d = _require(data, "checkpoint tail", frozenset({"count", "last_seq", "last_hash"}))
        return cls(d["count"], d["last_seq"], d["last_hash"])


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    sig: bytes
    seal_seq: int
    rotations: tuple[Record, ...] = ()
    tail: Tail | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, Checkpoint):
            raise FormatError("checkpoint document lacks its checkpoint")
        if not isinstance(self.sig, bytes) or len(self.sig) != 64:
            raise FormatError("checkpoint sig must be a 64-byte Ed25519 signature")
        _count(self.seal_seq, "checkpoint seal_seq")
        if self.seal_seq != self.checkpoint.size:
            raise FormatError(
                f"checkpoint seal_seq {self.seal_seq} must be the seq after the records it "
                f"covers ({self.checkpoint.size})"
            )
        if not isinstance(self.rotations, tuple) or not all(
            isinstance(r, Record) and r.type == "key_rotation" for r in self.rotations
        ):
            raise FormatError("checkpoint rotations must be key_rotation records")
        if self.tail is not None:
            if not isinstance(self.tail, Tail):
                raise FormatError("checkpoint tail is malformed")
            if self.tail.last_seq != self.seal_seq + self.tail.count:
                raise FormatError(
                    f"checkpoint tail of {self.tail.count} records after seal {self.seal_seq} "
                    f"cannot end at seq {self.tail.last_seq}"
                )

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
        fields = _SIGNED_FIELDS | ({"tail"} if "tail" in data else set())
        d = _require(data, "checkpoint document", frozenset(fields))
        rotations = d["rotations"]
        if not isinstance(rotations, list):
            raise FormatError("checkpoint rotations must be a list of key_rotation records")
        parsed: list[Record] = []
        for n, rotation in enumerate(rotations):
            if not isinstance(rotation, Mapping):
                raise FormatError(f"checkpoint rotations[{n}] must be a JSON object")
            try:
                parsed.append(Record.from_dict(rotation))
            except FormatError as exc:
                raise FormatError(f"checkpoint rotations[{n}]: {exc}") from None
        sig = d["sig"]
        if not isinstance(sig, str):
            raise FormatError("checkpoint sig must be a base64 string")
        return cls(
            checkpoint=Checkpoint.from_dict(d["checkpoint"]),
            sig=unb64(sig, "checkpoint sig"),
            seal_seq=d["seal_seq"],
            rotations=tuple(parsed),
            tail=Tail.from_dict(d["tail"]) if "tail" in d else None,
        )

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


def _path(value: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PATH:
        raise FormatError(f"{what} path must be a list of at most {MAX_PATH} hashes")
    if not all(is_hex64(node) for node in value):
        raise FormatError(f"{what} path must hold 64-lowercase-hex-digit hashes")
    return tuple(bytes.fromhex(node) for node in value)


def _check_path(path: object, what: str) -> None:
    if (
        not isinstance(path, tuple)
        or len(path) > MAX_PATH
        or not all(isinstance(p, bytes) and len(p) == 32 for p in path)
    ):
        raise FormatError(f"{what} path must be a tuple of 32-byte hashes")


@dataclass(frozen=True)
class InclusionProof:
    checkpoint: SignedCheckpoint
    seq: int
    record: bytes
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, SignedCheckpoint):
            raise FormatError("proof lacks its checkpoint")
        _count(self.seq, "proof seq")
        if self.seq >= self.checkpoint.checkpoint.size:
            raise FormatError(
                f"proof seq {self.seq} is not covered by the checkpoint of size "
                f"{self.checkpoint.checkpoint.size}"
            )
        if not isinstance(self.record, bytes) or not self.record or b"\n" in self.record:
            raise FormatError("proof record must be one stored line")
        _check_path(self.path, "proof")

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
        d = _require(data, "proof", frozenset({"format", "checkpoint", "seq", "record", "path"}))
        record = d["record"]
        if not isinstance(record, str):
            raise FormatError("proof record must be a string (the stored line)")
        try:
            raw = record.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("proof record is not valid UTF-8") from None
        return cls(
            checkpoint=SignedCheckpoint.from_dict(d["checkpoint"]),
            seq=d["seq"],
            record=raw,
            path=_path(d["path"], "proof"),
        )

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


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency of two signed checkpoints of one journal: ``new`` extends ``old``.

    What an auditor who kept an old checkpoint asks of a newer one (and what the collector and
    its witnesses exchange): the records ``old`` covered are still the first records of ``new``.
    """

    old: SignedCheckpoint
    new: SignedCheckpoint
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.old, SignedCheckpoint) or not isinstance(self.new, SignedCheckpoint):
            raise FormatError("consistency proof needs two checkpoints")
        if self.old.checkpoint.host != self.new.checkpoint.host:
            raise FormatError("consistency proof checkpoints are of different hosts")
        if self.old.checkpoint.size > self.new.checkpoint.size:
            raise FormatError("consistency proof old checkpoint is larger than the new one")
        _check_path(self.path, "consistency proof")

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "format": CONSISTENCY_FORMAT,
            "old": self.old.to_dict(),
            "new": self.new.to_dict(),
            "path": [p.hex() for p in self.path],
        }

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsistencyProof:
        if not isinstance(data, Mapping) or data.get("format") != CONSISTENCY_FORMAT:
            raise FormatError(f"not a {CONSISTENCY_FORMAT} document")
        d = _require(data, "consistency proof", frozenset({"format", "old", "new", "path"}))
        return cls(
            SignedCheckpoint.from_dict(d["old"]),
            SignedCheckpoint.from_dict(d["new"]),
            _path(d["path"], "consistency proof"),
        )

    def verify(self, genesis: PublicKey) -> None:
        """Check both signatures along their rotations from ``genesis``, then the proof."""
        self.old.verify(genesis)
        self.new.verify(genesis)
        old, new = self.old.checkpoint, self.new.checkpoint
        try:
            merkle.verify_consistency(
                old.size,
                new.size,
                bytes.fromhex(old.root),
                bytes.fromhex(new.root),
                self.path,
            )
        except FormatError as exc:
            raise FormatError(
                f"the checkpoint of size {new.size} does not extend the one of size "
                f"{old.size}: {exc}"
            ) from None
