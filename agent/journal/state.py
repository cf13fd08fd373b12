"""One chain state: where a verified journal stands, for the writer, the verifier, the forwarder
and the collector alike.

A ``ChainState`` is what one needs to go on checking (or writing) a journal after record
``next_seq - 1`` without reading anything before it: the hash of that record (``prev``), the
Merkle frontier of the records so far, the host, the boot the last record belongs to, the epoch
key in force (its id, and its public key once a rotation has happened), when that epoch began,
the seq of the last valid seal, and whether the journal ended with the agent's ``stop`` record
(and its final seal). It is a value: ``from_dict(to_dict(s)) == s``, and ``from_dict`` accepts
nothing else than what ``to_dict`` writes (no coercion; every error names the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import FormatError
from agent.journal.canonical import MAX_SAFE_INT, JsonValue
from agent.journal.keys import PublicKey, b64, unb64
from agent.journal.merkle import CompactTree
from agent.journal.record import GENESIS_PREV, is_hex64, parse_ts

STATE_FORMAT = "sealtrail-chain-state/v1"
_FIELDS = frozenset(
    {
        "format",
        "host",
        "next_seq",
        "prev",
        "frontier",
        "boot",
        "key_id",
        "key",
        "epoch_start",
        "last_seal",
        "last_type",
        "clean_end",
    }
)


def _int(value: object, name: str, low: int) -> int:
    if type(value) is not int or not low <= value <= MAX_SAFE_INT:
        raise FormatError(f"chain state {name} must be an integer from {low}, got {value!r}")
    return value


def _text(value: object, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise FormatError(f"chain state {name} must be a non-empty printable string")
    return value


def _ns(value: object) -> int | None:
    """A time in ns as the journal writes one: a decimal string without leading zeros (JSON
    numbers stop being exact at 2**53, and ns since 1970 are past it)."""
    if value is None:
        return None
    try:
        return parse_ts(value)
    except FormatError as exc:
        raise FormatError(f"chain state epoch_start: {exc}") from None


@dataclass(frozen=True)
class ChainState:
    """Where a journal stands after ``next_seq`` records (see the module docstring)."""

    host: str
    next_seq: int = 0
    prev: str = GENESIS_PREV
    #: Roots of the perfect subtrees of the Merkle tree over records 0..next_seq-1, largest
    #: first, as hex (``CompactTree.frontier``).
    frontier: tuple[str, ...] = ()
    #: Boot id of the last record (None before the first).
    boot: str | None = None
    #: Id of the epoch key in force (the genesis key's until a rotation).
    key_id: str | None = None
    #: The epoch key in force, base64, once a rotation named it (None: the genesis key).
    key: str | None = None
    #: ``ts`` (ns) of the rotation that began the epoch (None: the first epoch).
    epoch_start: int | None = None
    #: Seq of the last valid seal, -1 before the first.
    last_seal: int = -1
    #: Type of the last record (None before the first).
    last_type: str | None = None
    #: The last records are the agent's ``stop`` and the seal right after it.
    clean_end: bool = False
    _tree: CompactTree = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _text(self.host, "host")
        _int(self.next_seq, "next_seq", 0)
        if not is_hex64(self.prev):
            raise FormatError("chain state prev must be 64 lowercase hex digits")
        if not isinstance(self.frontier, tuple) or not all(is_hex64(n) for n in self.frontier):
            raise FormatError("chain state frontier must be a list of 64-hex-digit hashes")
        if len(self.frontier) != self.next_seq.bit_count():
            raise FormatError(
                f"chain state frontier has {len(self.frontier)} nodes; a tree of "
                f"{self.next_seq} records has {self.next_seq.bit_count()}"
            )
        if (self.next_seq == 0) != (self.prev == GENESIS_PREV):
            raise FormatError("chain state prev must be the genesis prev exactly when empty")
        _text(self.boot, "boot", optional=True)
        _text(self.last_type, "last_type", optional=True)
        if (self.next_seq == 0) != (self.last_type is None):
            raise FormatError("chain state last_type must be set exactly when not empty")
        if self.key_id is not None and (not isinstance(self.key_id, str) or len(self.key_id) != 32):
            raise FormatError("chain state key_id must be 32 hex digits")
        if self.key is not None:
            _text(self.key, "key")
            if PublicKey(unb64(self.key, "chain state key")).key_id != self.key_id:
                raise FormatError("chain state key does not match its key_id")
        if self.epoch_start is not None and (
            type(self.epoch_start) is not int or not 0 <= self.epoch_start < 1 << 63
        ):
            raise FormatError("chain state epoch_start must be a time in ns")
        _int(self.last_seal, "last_seal", -1)
        if self.last_seal >= self.next_seq:
            raise FormatError("chain state last_seal must be before next_seq")
        if type(self.clean_end) is not bool:
            raise FormatError("chain state clean_end must be true or false")
        if self.clean_end and (self.last_type != "seal" or self.last_seal != self.next_seq - 1):
            raise FormatError("chain state clean_end needs the last record to be a valid seal")
        tree = CompactTree()
        tree.restore(self.next_seq, [bytes.fromhex(n) for n in self.frontier])
        object.__setattr__(self, "_tree", tree)

    # ------------------------------------------------------------------------------ views
    def tree(self) -> CompactTree:
        """A new tree holding this state's frontier (the caller may append to it)."""
        tree = CompactTree()
        tree.restore(self.next_seq, self._tree.frontier)
        return tree

    def root(self) -> bytes:
        return self._tree.root()

    def epoch_key(self, genesis: PublicKey) -> PublicKey:
        """The epoch key in force: ``key`` once a rotation named it, else ``genesis``."""
        if self.key is None:
            if self.key_id is not None and self.key_id != genesis.key_id:
                raise FormatError(
                    f"chain state names epoch key {self.key_id} without the key, and it is not "
                    f"the genesis key {genesis.key_id}"
                )
            return genesis
        return PublicKey(unb64(self.key, "chain state key"))

    # ------------------------------------------------------------------------------ serial
    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "format": STATE_FORMAT,
            "host": self.host,
            "next_seq": self.next_seq,
            "prev": self.prev,
            "frontier": list(self.frontier),
            "boot": self.boot,
            "key_id": self.key_id,
            "key": self.key,
            "epoch_start": None if self.epoch_start is None else str(self.epoch_start),
            "last_seal": self.last_seal,
            "last_type": self.last_type,
            "clean_end": self.clean_end,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainState:
        """The exact inverse of ``to_dict``; raises ``FormatError`` naming the field."""
        if not isinstance(data, Mapping):
            raise FormatError("chain state must be a JSON object")
        if data.get("format") != STATE_FORMAT:
            raise FormatError(f"chain state format must be {STATE_FORMAT!r}")
        keys = set(data)
        if keys != _FIELDS:
            missing, extra = sorted(_FIELDS - keys), sorted(keys - _FIELDS)
            raise FormatError(
                "chain state "
                + "; ".join(
                    part
                    for part in (
                        f"lacks {', '.join(missing)}" if missing else "",
                        f"has unknown {', '.join(map(str, extra))}" if extra else "",
                    )
                    if part
                )
            )
        frontier = data["frontier"]
        if not isinstance(frontier, list):
            raise FormatError("chain state frontier must be a list of 64-hex-digit hashes")
        return cls(
            host=data["host"],
            next_seq=data["next_seq"],
            prev=data["prev"],
            frontier=tuple(frontier),
            boot=data["boot"],
            key_id=data["key_id"],
            key=data["key"],
            epoch_start=_ns(data["epoch_start"]),
            last_seal=data["last_seal"],
            last_type=data["last_type"],
            clean_end=data["clean_end"],
        )


def key_text(key: PublicKey) -> str:
    """How a ``ChainState`` holds an epoch key."""
    return b64(key.raw)
