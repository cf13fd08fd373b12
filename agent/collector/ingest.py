"""Verification on arrival: one batch of a host's journal lines against what the store holds.

Every batch is judged by the journal's own verifier, resumed from the chain state stored after
the last accepted batch (``Verifier.resume``): canonical bytes, record hashes, the prev chain,
gapless seqs, the host, boot changes, every seal's signature along the key-rotation chain from
the enrolled genesis key, and each new seal's Merkle root over everything accepted before it
(which is the consistency of the new checkpoint with the last accepted one: the stored frontier
is the old tree). No second implementation.

Outcomes:
- accepted: the new records up to the batch's last seal (``_sealed_prefix``) are durable in
  the store (``Store.append``, one transaction,
  compare-and-swap on the head's size) before the signed receipt is made;
- idempotent re-send: lines already accepted are compared by record hash; the same bytes are
  skipped, nothing is stored twice;
- gap: the batch starts past the head (the answer names where to resume);
- rejected: fork (a different record at an accepted seq), rollback (a different record 0: the
  journal was wiped and restarted under the same genesis key), tamper, unenrolled-key (a seal
  or rotation not chained from the enrolled key), foreign-host, malformed. The batch is kept
  aside in the store's quarantine, the host's status set, nothing merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.collector import fleet
from agent.collector.protocol import START_HEADER, Receipt
from agent.collector.store.base import Head, Host, Status, Store
from agent.errors import FormatError, SealtrailError
from agent.journal.checkpoint import Checkpoint, SignedCheckpoint
from agent.journal.keys import PublicKey, SigningKey
from agent.journal.record import RECORD_PREFIX, parse_line
from agent.journal.segments import Chunk
from agent.journal.state import ChainState
from agent.journal.verify import Finding, Verifier

log = logging.getLogger(__name__)

#: A batch that loses the compare-and-swap to another collector is judged again this often.
CAS_RETRIES = 5
#: How many findings a rejection names in its detail.
DETAIL_FINDINGS = 3
_SEAL_MARK = b'"type":"seal"'


@dataclass(frozen=True)
class Accepted:
    accepted: int  # new records stored by this batch
    skipped: int  # records re-sent that were already held (same bytes)
    size: int
    receipt: Receipt
    #: Records after the batch's last seal: not stored yet (send them again with their seal).
    pending: int = 0


@dataclass(frozen=True)
class Gap:
    size: int
    detail: str


@dataclass(frozen=True)
class Rejected:
    error: str  # one of protocol.REJECTIONS
    detail: str
    seq: int | None
    size: int


Outcome = Accepted | Gap | Rejected


class Ingest:
    """Judges and stores batches; thread-safe as far as the store is (one host at a time is the
    caller's job: the server holds a lock per host, collectors on one PostgreSQL rely on CAS)."""

    def __init__(
        self,
        store: Store,
        name: str,
        key: SigningKey,
        *,
        use_native: bool | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.name = name
        self._key = key
        self._use_native = use_native
        self._clock = clock
        self._genesis: dict[str, tuple[str, PublicKey]] = {}

    # ------------------------------------------------------------------------------ head
    def head(self, host: Host) -> dict[str, object]:
        head = self.store.head(host.name)
        return {
            "host": host.name,
            "size": head.size,
            "last_hash": head.last_hash.hex() if head.last_hash is not None else None,
            "checkpoint": json.loads(head.checkpoint) if head.checkpoint else None,
            "status": str(head.status),
            "detail": head.detail,
            "receipt": self._receipt(host, head).to_dict(),
        }

    def _receipt(self, host: Host, head: Head, state: ChainState | None = None) -> Receipt:
        if state is None and head.state is not None:
            state = ChainState.from_dict(json.loads(head.state))
        root = state.root() if state is not None else hashlib.sha256(b"").digest()
        return Receipt.sign(self._key, self.name, host.name, head.size, root, self._clock())

    # ------------------------------------------------------------------------------ batch
    def ingest(self, host: Host, start: int, body: bytes) -> Outcome:
        """Judge one batch starting at seq ``start``; store it if it holds."""
        for _ in range(CAS_RETRIES):
            outcome = self._attempt(host, start, body)
            if outcome is not None:
                return outcome
        head = self.store.head(host.name)
        return Gap(head.size, "the head moved under concurrent ingest; ask the head again")

    def _attempt(self, host: Host, start: int, body: bytes) -> Outcome | None:
        now = self._clock()
        head = self.store.head(host.name)
        size = head.size
        if not body.endswith(b"\n") or not body:
            return self._reject(
                host, head, "malformed", "the batch must end with a newline", start, body
            )
        if start > size:
            self.store.touch(host.name, now)
            return Gap(size, f"the collector holds records 0..{size - 1}; resume at {size}")
        lines = body.split(b"\n")
        lines.pop()  # after the last newline
        try:
            first = parse_line(lines[0])
        except FormatError as exc:
            return self._reject(host, head, "malformed", f"record {start}: {exc}", start, body)
        if first.seq != start:
            return self._reject(
                host,
                head,
                "malformed",
                f"{START_HEADER} says {start} but the first record has seq {first.seq}",
                start,
                body,
            )
        overlap = min(len(lines), size - start)
        if overlap > 0:
            seq = self._diverges(host, start, lines[:overlap])
            if seq is not None:
                kind = "rollback" if seq == 0 else "fork"
                what = (
                    "record 0 differs from the one accepted: the journal was wiped and "
                    "restarted under the same genesis key"
                    if seq == 0
                    else f"record {seq} differs from the one accepted at that seq"
                )
                return self._reject(host, head, kind, what, seq, body)
        new = lines[overlap:]
        sealed = _sealed_prefix(new)
        pending = len(new) - sealed
        new = new[:sealed]
        if not new:
            self.store.touch(host.name, now)
            return Accepted(0, overlap, size, self._receipt(host, head), pending)
        verifier = self._verifier(host, head)
        if isinstance(verifier, Rejected):
            return verifier
        new_body = b"\n".join(new) + b"\n"
        found = [f for f in verifier.feed_chunk(Chunk(f"batch:{size}", 0, new_body))]
        found += verifier.settle()
        errors = [f for f in found if f.severity == "error"]
        if errors:
            kind = _kind(errors)
            detail = "; ".join(str(f) for f in errors[:DETAIL_FINDINGS])
            if len(errors) > DETAIL_FINDINGS:
                detail += f" (and {len(errors) - DETAIL_FINDINGS} more)"
            return self._reject(host, head, kind, detail, _first_seq(errors), body)
        state = verifier.state()
        hashes = [hashlib.sha256(RECORD_PREFIX + line).digest() for line in new]
        checkpoint, seal_ns = _last_checkpoint(new)
        stored = self.store.append(
            host.name,
            size,
            new,
            hashes,
            json.dumps(state.to_dict(), separators=(",", ":")),
            checkpoint,
            seal_ns,
            now,
            fleet_entry=None if checkpoint is None else fleet.entry_of(checkpoint),
        )
        if not stored:
            return None  # another collector advanced the head: judge again from there
        # The receipt says what this append made durable (another collector may already have
        # gone further: reading the head again could pair its size with this state's root).
        receipt = Receipt.sign(
            self._key, self.name, host.name, state.next_seq, state.root(), self._clock()
        )
        return Accepted(len(new), overlap, state.next_seq, receipt, pending)

    def _diverges(self, host: Host, start: int, lines: list[bytes]) -> int | None:
        """The first seq at which ``lines`` differ from the stored records, or None."""
        stored = self.store.record_hashes(host.name, start, start + len(lines))
        for i, (line, held) in enumerate(zip(lines, stored, strict=False)):
            if hashlib.sha256(RECORD_PREFIX + line).digest() != held:
                return start + i
        return None

    def _verifier(self, host: Host, head: Head) -> Verifier | Rejected:
        genesis = self._genesis_key(host)
        if head.state is None:
            return Verifier(genesis, expected_host=host.name, use_native=self._use_native)
        try:
            state = ChainState.from_dict(json.loads(head.state))
        except (FormatError, ValueError) as exc:  # the store was changed behind our back
            detail = f"the stored chain state of {host.name} is not valid: {exc}"
            log.error("%s", detail)
            return Rejected("tamper", detail, None, head.size)
        return Verifier.resume(state, genesis, use_native=self._use_native)

    def _genesis_key(self, host: Host) -> PublicKey:
        cached = self._genesis.get(host.name)
        if cached is None or cached[0] != host.genesis_key:
            cached = (host.genesis_key, PublicKey.from_line(host.genesis_key))
            self._genesis[host.name] = cached
        return cached[1]

    def _reject(
        self, host: Host, head: Head, kind: str, detail: str, seq: int | None, body: bytes
    ) -> Rejected:
        now = self._clock()
        log.warning("rejected a batch of %s: %s: %s", host.name, kind, detail)
        try:
            self.store.quarantine(host.name, f"{kind}: {detail}", body, now)
            self.store.set_status(
                host.name, Status(kind) if kind in _STATUS else Status.TAMPER, detail, now
            )
        except SealtrailError as exc:  # the rejection stands; keeping it aside failed
            log.error("cannot record the rejected batch of %s: %s", host.name, exc)
        return Rejected(kind, detail, seq, head.size)


_STATUS = {s.value for s in Status}


def _kind(errors: list[Finding]) -> str:
    """The rejection code for the verifier's errors (the first decisive one)."""
    for f in errors:
        m = f.message
        if "is not the journal's host" in m:
            return "foreign-host"
        if "not in the rotation chain" in m or m.startswith("key rotation rejected"):
            return "unenrolled-key"
    for f in errors:
        if f.message.startswith(("malformed record", "torn line")):
            return "malformed"
    return "tamper"


def _first_seq(errors: list[Finding]) -> int | None:
    """The record to blame: the first a record-level finding names (a seal's finding names
    only the batch it covers, which may reach back into records accepted earlier)."""
    for batch in (False, True):
        seqs = [f.seq for f in errors if f.seq is not None and f.batch == batch]
        if seqs:
            return min(seqs)
    return None


def _sealed_prefix(lines: list[bytes]) -> int:
    """How many of ``lines`` a seal covers: up to and including the last seal line.

    Only sealed records are stored: a record after the last seal is authenticated by nothing
    yet (its hash is checked only by the record after it, its content only by the next seal),
    so storing it would let a changed last line in. The agent seals at least every heartbeat,
    and its final stop is sealed, so every record is stored at the latest one seal later.
    """
    for i in range(len(lines) - 1, -1, -1):
        if _SEAL_MARK in lines[i] and _is_seal(lines[i]):
            return i + 1
    return 0


def _is_seal(line: bytes) -> bool:
    """The line is a seal record (not merely a line with a nested ``"type":"seal"``)."""
    try:
        return parse_line(line).type == "seal"
    except FormatError:
        return True  # malformed: let the verifier judge it (and reject the batch)


def _last_checkpoint(lines: list[bytes]) -> tuple[str | None, int | None]:
    """The last seal among ``lines`` as a checkpoint document (JSON) and its time."""
    for line in reversed(lines):
        if _SEAL_MARK in line:
            record = parse_line(line)  # verified already
            if record.type != "seal":
                continue
            checkpoint, sig = Checkpoint.from_seal(record)
            doc = SignedCheckpoint(checkpoint, sig, record.seq).to_dict()
            return json.dumps(doc, separators=(",", ":"), sort_keys=True), record.ts
    return None, None
