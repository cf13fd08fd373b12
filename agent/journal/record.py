"""One journal record: the model, its canonical line and its domain-separated hash.

A record is one line of canonical JSON (``canonical.py``) terminated by ``\\n``. The common
fields are ``seq`` (gapless from 0), ``ts`` (nanoseconds since the epoch, as a decimal *string*
because RFC 8785 integers stop at 2**53, which nanosecond clocks passed in 1970+104 days), ``host``,
``boot_id``, ``type`` and ``prev`` (hex hash of the previous record). Type-specific fields sit
next to them at the top level (``jq .rule`` works) and may not reuse a common name.

The record hash is SHA-256 over ``RECORD_PREFIX`` + the line bytes without the newline: exactly
the bytes stored, never a re-serialisation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import FormatError
from agent.journal.canonical import JsonValue, canonical, parse_canonical

RECORD_PREFIX = b"sealtrail/record/v1\x00"
#: ``prev`` of record 0.
GENESIS_PREV = "0" * 64
COMMON_FIELDS = frozenset({"seq", "ts", "host", "boot_id", "type", "prev"})

#: Every record type, with the fields it must carry. Writer-owned types cannot be appended by
#: the agent through ``JournalWriter.append``.
REQUIRED_FIELDS: Mapping[str, frozenset[str]] = {
    "start": frozenset(),
    "stop": frozenset(),
    "event": frozenset({"kind"}),
    "verdict": frozenset({"action", "policy", "rule"}),
    "policy_loaded": frozenset({"digest", "files"}),
    "policy_rejected": frozenset({"errors"}),
    "policy_mismatch": frozenset({"digest", "errors"}),
    "reload": frozenset(),
    "loss": frozenset({"drops"}),
    "recovery": frozenset(
        {"cut_bytes", "cut_segment", "partial_seq", "last_good_seq", "last_sealed_seq"}
    ),
    "key_rotation": frozenset({"new_key", "new_key_id", "old_key_id", "sig"}),
    "seal": frozenset({"size", "root", "key_id", "sig"}),
    # the collector's signed word that it holds records 0..size-1 (agent.forward)
    "receipt": frozenset({"collector", "size", "root", "collector_ts", "key_id", "sig"}),
    "forward_error": frozenset({"collector", "error", "detail"}),
    # the collector's witnessed fleet checkpoint whose entry `index` is this host's checkpoint
    # of `host_size` records (agent.forward.fleetnote; docs/witness.md)
    "fleet_checkpoint": frozenset({"collector", "checkpoint", "index", "host_size"}),
    # the agent took over the guard an earlier agent pinned (agent.kernel.pins)
    "guard_takeover": frozenset({"pin_dir", "generation"}),
    # enforcement an earlier run held through a restart was released (agent.enforce.handover)
    "enforcement_gap": frozenset({"mechanism", "reason"}),
    # the agent took over the fanotify group an earlier agent stored (agent.enforce.handover)
    "fanotify_takeover": frozenset({"marks", "denied_unanswered"}),
}
WRITER_TYPES = frozenset({"recovery", "key_rotation", "seal", "stop"})
#: Types whose records hold exactly their required fields. A seal's signature covers only the
#: checkpoint (size, root, key_id, prev, ts, host), so any other field in a seal line would be
#: bytes nothing signs: the final seal of a journal is covered by no later record either.
EXACT_TYPES = frozenset({"seal"})
VERDICT_ACTIONS = frozenset({"allow", "audit", "deny", "kill", "would_deny", "would_kill"})


def record_hash(line: bytes) -> bytes:
    """Hash of one stored record: ``line`` is the canonical bytes without the newline."""
    return hashlib.sha256(RECORD_PREFIX + line).digest()


_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch


def is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64(value) is not None


def check_fields(rtype: str, fields: Mapping[str, object]) -> None:
    """Raise FormatError unless ``fields`` suit a record of type ``rtype``."""
    required = REQUIRED_FIELDS.get(rtype)
    if required is None:
        raise FormatError(f"unknown record type {rtype!r}")
    if not COMMON_FIELDS.isdisjoint(fields):
        clash = sorted(COMMON_FIELDS.intersection(fields))
        raise FormatError(f"type fields reuse common names: {clash}")
    if not required <= fields.keys():
        raise FormatError(f"{rtype} record lacks fields {sorted(required - fields.keys())}")
    if rtype in EXACT_TYPES and fields.keys() != required:
        extra = sorted(str(k) for k in fields.keys() - required)
        raise FormatError(f"{rtype} record has fields nothing signs: {extra}")
    if rtype == "verdict":
        action = fields["action"]
        # a hostile list or object is unhashable: test the type before the set lookup
        if not isinstance(action, str) or action not in VERDICT_ACTIONS:
            raise FormatError(
                f"verdict action {_short(action)} is not one of {sorted(VERDICT_ACTIONS)}"
            )


def _short(value: object, limit: int = 80) -> str:
    """``repr`` of a value from a record, cut so that a hostile one cannot flood a message."""
    text = repr(value) if isinstance(value, str | int | bool | None) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def parse_ts(value: object) -> int:
    if not isinstance(value, str) or not value.isdigit() or not value.isascii():
        raise FormatError(f"ts must be a decimal string of nanoseconds, got {value!r}")
    if len(value) > 1 and value[0] == "0":
        raise FormatError(f"ts has a leading zero: {value!r}")
    return int(value)


@dataclass(frozen=True)
class Record:
    """A validated record. ``fields`` are the type-specific fields (not copied again)."""

    seq: int
    ts: int
    host: str
    boot_id: str
    type: str
    prev: str
    fields: Mapping[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.seq) is not int or self.seq < 0:
            raise FormatError(f"seq must be a non-negative integer, got {self.seq!r}")
        if type(self.ts) is not int or self.ts < 0:
            raise FormatError(f"ts must be a non-negative integer, got {self.ts!r}")
        for name in ("host", "boot_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise FormatError(f"{name} must be a non-empty string, got {value!r}")
        if not is_hex64(self.prev):
            raise FormatError(f"prev must be 64 lowercase hex digits, got {self.prev!r}")
        check_fields(self.type, self.fields)

    def to_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = dict(self.fields)
        out.update(
            seq=self.seq,
            ts=str(self.ts),
            host=self.host,
            boot_id=self.boot_id,
            type=self.type,
            prev=self.prev,
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Inverse of ``to_dict``: every key that is not common becomes a type field."""
        if not isinstance(data, Mapping):
            raise FormatError("a record must be a JSON object")
        fields = dict(data)
        try:
            common = {name: fields.pop(name) for name in COMMON_FIELDS}
        except KeyError as exc:
            raise FormatError(f"record lacks field {exc.args[0]!r}") from None
        if not isinstance(common["type"], str):
            raise FormatError(f"type must be a string, got {common['type']!r}")
        return cls(
            seq=common["seq"],
            ts=parse_ts(common["ts"]),
            host=common["host"],
            boot_id=common["boot_id"],
            type=common["type"],
            prev=common["prev"],
            fields=fields,
        )

    def to_line(self) -> bytes:
        """Canonical bytes of this record, without the newline."""
        return canonical(self.to_dict())


def parse_line(line: bytes) -> Record:
    """Parse stored bytes, insisting they are exactly the canonical encoding of the record."""
    return Record.from_dict(parse_canonical(line))
