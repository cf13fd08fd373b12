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

    def why(self, lo: int, hi: int) -> str | None:
        """The first error whose range meets ``lo..hi``, or None."""
        i = bisect.bisect_right(self._starts, hi)
        if i == 0 or self._ends[i - 1] < lo:
            return None
        for start, end, message in self._ranges[:i]:
            if end >= lo and start <= hi:
                return message
        return None


class _Batches:
    """The second pass: records wait for their seal, then go on together or are excluded."""

    def __init__(self, evidence: Evidence, bad: _Bad, sink: Callable[[Record], None]) -> None:
        self.evidence = evidence
        self.bad = bad
        self.sink = sink
        self.pending: list[tuple[Record, str]] = []

    def line(self, data: bytes, where: str, complete: bool = True) -> None:
        ev = self.evidence
        if not complete:
            ev.exclude(Excluded(None, None, where, "torn line (no newline): not a record"))
            return
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or type(record.get("seq")) is not int:
            ev.unparsed += 1
            ev.exclude(Excluded(None, None, where, "not a journal record (malformed line)"))
            return
        self.pending.append((record, where))
        if record.get("type") == "seal":
            self._settle(record)

    def _settle(self, seal: Record) -> None:
        batch, self.pending = self.pending, []
        lo, hi = min(r["seq"] for r, _ in batch), seal["seq"]
        why = self.bad.why(lo, hi)
        if why is not None:
            for record, where in batch:
                own = self.bad.why(record["seq"], record["seq"])
                reason = (
                    own
                    or f"in the seal batch of records {lo}\u2013{hi}, which does not verify: {why}"
                )
                self.evidence.exclude(
                    Excluded(record["seq"], _text(record.get("type")), where, reason)
                )
            return
        ev = self.evidence
        for record, _ in batch:
            ev.verified += 1
            if record["type"] == "key_rotation":
                ev.rotations.append(
                    Rotation(
                        record["seq"],
                        int(record["ts"]),
                        str(record["old_key_id"]),
                        str(record["new_key_id"]),
                    )
                )
            self.sink(record)
        ev.seal = Seal(
            hi, int(seal["size"]), str(seal["root"]), str(seal["key_id"]), int(seal["ts"])
        )

    def finish(self) -> None:
        for record, where in self.pending:
            self.evidence.exclude(
                Excluded(
                    record["seq"],
                    _text(record.get("type")),
                    where,
                    "after the last valid seal: signed by nothing (yet)",
                )
            )
        self.pending = []


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
    batches = _Batches(evidence, bad, sink)
    for line in segment_lines(directory):
        batches.line(line.data, f"{line.segment} at byte {line.offset}", line.complete)
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
    batches = _Batches(evidence, bad, sink)
    for seq, line in store.records(host.name, 0, report.head.size):
        batches.line(line, f"store:{host.name} seq {seq}")
    batches.finish()
    return evidence
