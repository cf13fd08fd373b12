"""The forwarding protocol, version 1: endpoints, headers, error codes, and signed receipts.

Shared by the collector (``server``) and the agent (``agent.forward``); documented in
docs/collector.md ("Protocol"). Every answer is JSON (``application/json``) except ``/metrics``.

- ``GET /v1/head``: what the collector holds for the caller (the host its client certificate
  is bound to): ``{"host", "size", "last_hash", "checkpoint", "status", "detail", "receipt"}``.
- ``POST /v1/ingest``: body = stored journal lines, each ending in ``\\n``, exactly as the
  journal holds them (never re-serialised), ``Content-Type: application/x-sealtrail-lines``,
  header ``Sealtrail-Start: <seq of the first line>``. 200 ``{"accepted", "size", "receipt"}``
  once the batch is durable; 409 ``{"error": "gap", "size"}`` when it starts past the head;
  422 ``{"error": <one of REJECTIONS>, "detail", "seq"}`` when it is rejected (and kept aside).
- ``GET /v1/health``: ``{"ok": true, "store": ..., "version": ...}``. ``GET /metrics``:
  Prometheus text.

A receipt is the collector's Ed25519 signature over (collector, host, size, root, time): "I
hold records 0..size-1 of host, whose Merkle root is root". The agent checks it with
``collector.pub`` from its enrollment and journals it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import FormatError
from agent.journal.canonical import MAX_SAFE_INT, JsonValue, canonical
from agent.journal.keys import PublicKey, SigningKey, b64, unb64
from agent.journal.record import is_hex64, parse_ts

API = "/v1"
HEAD_PATH = f"{API}/head"
INGEST_PATH = f"{API}/ingest"
HEALTH_PATH = f"{API}/health"
#: The latest witnessed fleet checkpoint (a C2SP signed note; docs/witness.md).
FLEET_CHECKPOINT_PATH = f"{API}/fleet/checkpoint"
METRICS_PATH = "/metrics"
LINES_TYPE = "application/x-sealtrail-lines"
START_HEADER = "Sealtrail-Start"

#: Why a batch is rejected (422). ``gap`` is a 409: nothing is wrong, the sender resumes.
REJECTIONS = frozenset(
    {
        "malformed",  # not journal lines, or not canonical records
        "tamper",  # a hash, link, seal or signature does not hold
        "fork",  # a different record at a seq already accepted
        "rollback",  # a journal restarted from seq 0 under the same genesis key (wiped)
        "unenrolled-key",  # seals signed by a key not chained from the enrolled genesis key
        "foreign-host",  # records of another host than the client certificate's
    }
)

RECEIPT_FORMAT = "sealtrail-receipt/v1"
RECEIPT_PREFIX = b"sealtrail/receipt/v1\x00"
_RECEIPT_FIELDS = frozenset({"format", "collector", "host", "size", "root", "ts", "key_id", "sig"})


@dataclass(frozen=True)
class Receipt:
    collector: str
    host: str
    size: int
    root: str
    ts: int
    key_id: str
    sig: bytes = b""

    def __post_init__(self) -> None:
        for name in ("collector", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or not value.isprintable():
                raise FormatError(f"receipt {name} must be a non-empty printable string")
        if type(self.size) is not int or not 0 <= self.size <= MAX_SAFE_INT:
            raise FormatError(f"receipt size must be an integer from 0, got {self.size!r}")
        if not is_hex64(self.root):
            raise FormatError("receipt root must be 64 lowercase hex digits")
        if type(self.ts) is not int or not 0 <= self.ts < 1 << 63:
            raise FormatError("receipt ts must be a time in ns")
        if not isinstance(self.key_id, str) or len(self.key_id) != 32:
            raise FormatError("receipt key_id must be 32 hex digits")
        if not isinstance(self.sig, bytes) or len(self.sig) not in (0, 64):
            raise FormatError("receipt sig must be a 64-byte Ed25519 signature")

    def signing_input(self) -> bytes:
        body = {k: v for k, v in self.to_dict().items() if k != "sig"}
        return RECEIPT_PREFIX + canonical(body)

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "format": RECEIPT_FORMAT,
            "collector": self.collector,
            "host": self.host,
            "size": self.size,
            "root": self.root,
            "ts": str(self.ts),
            "key_id": self.key_id,
            "sig": b64(self.sig),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Receipt:
        if not isinstance(data, Mapping) or data.get("format") != RECEIPT_FORMAT:
            raise FormatError(f"not a {RECEIPT_FORMAT} document")
        if set(data) != _RECEIPT_FIELDS:
            missing = sorted(_RECEIPT_FIELDS - set(data))
            what = f"lacks {missing[0]!r}" if missing else "has unknown fields"
            raise FormatError(f"receipt {what}")
        sig = data["sig"]
        if not isinstance(sig, str):
            raise FormatError("receipt sig must be a base64 string")
        try:
            ts = parse_ts(data["ts"])
        except FormatError as exc:
            raise FormatError(f"receipt {exc}") from None
        return cls(
            data["collector"],
            data["host"],
            data["size"],
            data["root"],
            ts,
            data["key_id"],
            unb64(sig, "receipt sig"),
        )

    @classmethod
    def sign(
        cls, key: SigningKey, collector: str, host: str, size: int, root: bytes, ts: int | None
    ) -> Receipt:
        unsigned = cls(
            collector, host, size, root.hex(), time.time_ns() if ts is None else ts, key.key_id
        )
        return cls(
            unsigned.collector,
            unsigned.host,
            unsigned.size,
            unsigned.root,
            unsigned.ts,
            unsigned.key_id,
            key.sign(unsigned.signing_input()),
        )

    def verify(self, key: PublicKey, *, host: str | None = None) -> None:
        """Raise ``FormatError`` unless ``key`` signed this receipt (for ``host``)."""
        if self.key_id != key.key_id:
            raise FormatError(
                f"receipt signed by key {self.key_id}, not the collector key {key.key_id}"
            )
        if not key.verify(self.sig, self.signing_input()):
            raise FormatError("receipt signature is not valid")
        if host is not None and self.host != host:
            raise FormatError(f"receipt is for host {self.host!r}, not {host!r}")
