"""What a report may use: the records that verified, and an account of every one that did not.

Two passes over one host's lines. The first is the journal's own verification (``Verifier``,
as ``journal verify`` or ``collector verify`` run it), keeping every error's seq range. The
second reads the lines again and hands on a record only if it is proven: it lies in a seal
batch (the records after one seal up to and including the next) whose seal verified and no
record of which has an error. A seal signs its batch's Merkle root and the hash of the record
before it, and every record chains to the one before, so one altered record leaves its whole
batch unproven: the batch is left out, and every record of it is listed with the reason, as
are the records after the last valid seal (signed by nothing yet) and lines that are not
records at all. Nothing is left out silently.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent.collector.reverify import verify_host
from agent.collector.store import Host, Store
from agent.journal.keys import PublicKey
from agent.journal.segments import SegmentNumbering, journal_chunks, list_segments
from agent.journal.segments import iter_lines as segment_lines
from agent.journal.verify import Finding, Summary, Verifier

#: Excluded records listed one by one at most; beyond, the count and the seq ranges say it.
MAX_LISTED = 2000
#: A record handed on: the parsed JSON object of a line that verified.
Record = dict[str, Any]


@dataclass(frozen=True)
class Excluded:
    """One line left out of the report, and why."""

    seq: int | None
    type: str | None
    where: str  # segment and byte offset, or the collector's store and seq
    reason: str


@dataclass(frozen=True)
class Seal:
    """The last seal that verified: the checkpoint the report stands on."""

    seq: int
    size: int
    root: str
    key_id: str
    ts: int


@dataclass(frozen=True)
class Rotation:
    seq: int
    ts: int
    old_key_id: str
    new_key_id: str


@dataclass
class Evidence:
    """One host's journal as the report sees it (module doc)."""

    source: str
    genesis_key_id: str
    summary: Summary
    seal: Seal | None = None
    rotations: list[Rotation] = field(default_factory=list)
    verified: int = 0
    excluded_count: int = 0
    excluded: list[Excluded] = field(default_factory=list)
    #: Seq ranges of the excluded records (merged), whatever their number.
    excluded_ranges: list[tuple[int, int]] = field(default_factory=list)
    unparsed: int = 0

    @property
    def findings(self) -> list[Finding]:
        return self.summary.findings

    def exclude(self, item: Excluded) -> None:
        self.excluded_count += 1
        if len(self.excluded) < MAX_LISTED:
            self.excluded.append(item)
        if item.seq is None:
            return
        ranges = self.excluded_ranges
        if ranges and ranges[-1][0] <= item.seq <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], item.seq))
        else:
            ranges.append((item.seq, item.seq))


class _Bad:
    """Seq ranges that verification found errors in: which records they taint, and why."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, str]] = []
        self._starts: list[int] = []
        self._ends: list[int] = []  # running maximum of the ends, for the overlap search

    def add(self, finding: Finding) -> None:
        if finding.severity == "error" and finding.seq is not None:
            end = finding.seq if finding.seq_end is None else finding.seq_end
            self._ranges.append((finding.seq, max(finding.seq, end), str(finding)))

    def freeze(self) -> None:
        self._ranges.sort()
        self._starts = [r[0] for r in self._ranges]
        top = -1
        for _, end, _ in self._ranges:
            top = max(top, end)
            self._ends.append(top)

    def own(self, seq: int) -> str | None:
        """The narrowest error that names ``seq`` (a record's own finding before its batch's)."""
        i = bisect.bisect_right(self._starts, seq)
        found = [(end - start, message)
                 for start, end, message in (self._ranges[j] for j in
                                             range(bisect.bisect_left(self._ends, seq, 0, i), i))
                 if end >= seq]  # fmt: skip
        return min(found)[1] if found else None

    def why(self, lo: int, hi: int) -> str | None:
        """The first error whose range meets ``lo..hi``, or None. The ranges that start at or
        before ``hi`` are ``[:i]``; the running maximum of their ends rises, so the first one
        that may reach ``lo`` is found by bisection too."""
        i = bisect.bisect_right(self._starts, hi)
        for j in range(bisect.bisect_left(self._ends, lo, 0, i), i):
            _, end, message = self._ranges[j]
            if end >= lo:
                return message
        return None


#: Where a line is, for the listing: (segment or source, byte offset or seq) -> text.
Where = Callable[[str, int], str]


class _Batches:
    """The second pass: records wait for their seal, then go on together or are excluded.
    Positions are kept as (segment, offset) and written out only for a record left out."""

    def __init__(
        self, evidence: Evidence, bad: _Bad, sink: Callable[[Record], None], where: Where
    ) -> None:
        self.evidence = evidence
        self.bad = bad
        self.sink = sink
        self.where = where
        self.pending: list[tuple[Record, str, int]] = []
        self.lo = _NONE  # the lowest seq waiting (a damaged journal may not be in order)

    def line(self, data: bytes, segment: str, offset: int, complete: bool = True) -> None:
        if complete:
            try:
                record = orjson.loads(data)
            except orjson.JSONDecodeError:
                record = None
            if type(record) is dict and type(seq := record.get("seq")) is int:
                self.pending.append((record, segment, offset))
                self.lo = min(self.lo, seq)
                if record.get("type") == "seal":
                    self._settle(record)
                return
            self.evidence.unparsed += 1
            why = "not a journal record (malformed line)"
        else:
            why = "torn line (no newline): not a record"
        self.evidence.exclude(Excluded(None, None, self.where(segment, offset), why))

    def _settle(self, seal: Record) -> None:
        batch, self.pending = self.pending, []
        lo, hi, self.lo = self.lo, seal["seq"], _NONE
        why = self.bad.why(lo, hi)
        if why is not None:
            reason = f"in the seal batch of records {lo}\u2013{hi}, which does not verify: {why}"
            self._exclude(batch, reason)
            return
        ev = self.evidence
        ev.verified += len(batch)
        sink = self.sink
        for record, _, _ in batch:
            if record["type"] == "key_rotation":
                ev.rotations.append(Rotation(record["seq"], int(record["ts"]),
                                             str(record["old_key_id"]),
                                             str(record["new_key_id"])))  # fmt: skip
            sink(record)
        ev.seal = Seal(
            hi, int(seal["size"]), str(seal["root"]), str(seal["key_id"]), int(seal["ts"])
        )

    def _exclude(self, batch: list[tuple[Record, str, int]], reason: str) -> None:
        for record, segment, offset in batch:
            seq = record["seq"]
            own = self.bad.own(seq)
            self.evidence.exclude(Excluded(seq, _text(record.get("type")),
                                           self.where(segment, offset), own or reason))  # fmt: skip

    def finish(self) -> None:
        self._exclude(self.pending, "after the last valid seal: signed by nothing (yet)")
        self.pending = []


_NONE = 1 << 63


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _collect(findings: Iterable[Finding], bad: _Bad) -> None:
    for finding in findings:
        bad.add(finding)


def from_journal(directory: Path, genesis: PublicKey, sink: Callable[[Record], None]) -> Evidence:
    """The evidence of a journal directory: ``journal verify``'s checks, then the records
    that verified to ``sink``, in order."""
    segments = list_segments(directory)
    verifier = Verifier(genesis, numbering=SegmentNumbering())
    bad = _Bad()
    for chunk in journal_chunks(segments):
        _collect(verifier.feed_chunk(chunk), bad)
    _collect(verifier.finish(), bad)
    bad.freeze()
    evidence = Evidence(str(directory), genesis.key_id, verifier.summary)
    batches = _Batches(evidence, bad, sink, lambda segment, at: f"{segment} at byte {at}")
    for line in segment_lines(directory):
        batches.line(line.data, line.segment, line.offset, line.complete)
    batches.finish()
    return evidence


def from_store(store: Store, host: Host, sink: Callable[[Record], None]) -> Evidence:
    """The evidence of one host in a collector's store: ``collector verify``'s checks (the
    enrolled genesis key, the store's own columns), then the records that verified."""
    bad = _Bad()
    report = verify_host(store, host, emit=bad.add)
    bad.freeze()
    genesis = PublicKey.from_line(host.genesis_key)
    evidence = Evidence(f"collector store, host {host.name}", genesis.key_id, report.summary)
    batches = _Batches(evidence, bad, sink, lambda source, seq: f"{source} seq {seq}")
    source = f"store:{host.name}"
    for seq, line in store.records(host.name, 0, report.head.size):
        batches.line(line, source, seq)
    batches.finish()
    return evidence
