"""``collector verify``: what the store holds, verified again end to end with the journal's own
verifier (docs/collector.md, "collector verify").

Ingest judged every batch on arrival; this looks again, later, at what is in the store now, as
someone who trusts neither ingest nor the database would: every stored record of a host from
seq 0 goes through ``Verifier`` with the enrolled genesis key and the enrolled name as the only
host allowed, streamed from the store in runs of about ``CHUNK_BYTES`` (never a whole host in
memory). Then what the store keeps beside the records must agree with them:

- each row's stored record hash is the hash of its stored line (ingest compares re-sent lines
  by that hash, so a changed hash would let a forged line pass as a re-send);
- the rows are exactly seqs 0 .. size-1 of the head: none missing at the end, none beyond,
  and the last is a valid seal (ingest stores a batch only up to its last seal, so records
  after it were added behind the collector's back: they are authenticated by nothing);
- the head's chain state is the one the verifier reached (ingest resumes from it), its last
  hash that of the last record, and its checkpoint the one the last valid seal signs.
- the host's last fleet-log entry is a stored seal's checkpoint (a store cut back behind it,
  head and all, still verifies on its own), and the published fleet checkpoint covers no more
  entries than the fleet log holds.

Findings are the verifier's, with the seq. The verifier reads each run of records as a segment
named ``store:HOST@SEQ`` (the run that starts at record SEQ; byte offsets count within it);
findings about the store's own columns name ``store:HOST``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.collector.store import Head, Host, Store
from agent.errors import FormatError
from agent.journal.checkpoint import Checkpoint, SignedCheckpoint
from agent.journal.keys import PublicKey
from agent.journal.record import parse_line, record_hash
from agent.journal.segments import Chunk
from agent.journal.state import ChainState
from agent.journal.verify import MAX_KEPT_FINDINGS, Finding, Summary, Verifier
from agent.witness.evidence import parse_entry

#: Bytes of lines fed to the verifier at a time (one run, ``store:HOST@SEQ``).
CHUNK_BYTES = 4 << 20
_BEYOND = 1 << 62
_BEHIND = "the store was changed behind the collector's back"


@dataclass
class HostReport:
    """One host's verification: its head as read when it began, and the verifier's summary
    with the store's own findings added."""

    host: Host
    head: Head
    summary: Summary

    @property
    def ok(self) -> bool:
        return self.summary.ok

    def to_dict(self) -> dict[str, object]:
        """``journal verify --json``'s summary, and the host, stored size and status."""
        out = self.summary.to_dict()
        out.update(host=self.host.name, stored_size=self.head.size, status=str(self.head.status))
        return out


def verify_host(
    store: Store,
    host: Host,
    *,
    emit: Callable[[Finding], None] | None = None,
    progress: Callable[[int], None] | None = None,
    use_native: bool | None = None,
) -> HostReport:
    """Verify what ``store`` holds of ``host``; every finding goes to ``emit`` as it is found,
    ``progress`` gets the number of records read since its last call."""
    return _HostCheck(store, host, use_native).run(emit or _ignore, progress or _ignore)


def _ignore(_: object) -> None:
    return None


class _HostCheck:
    def __init__(self, store: Store, host: Host, use_native: bool | None) -> None:
        self.store = store
        self.name = host.name
        self.head = store.head(host.name)
        self.genesis = PublicKey.from_line(host.genesis_key)
        self.verifier = Verifier(self.genesis, expected_host=host.name, use_native=use_native)
        self.report = HostReport(host, self.head, self.verifier.summary)
        self.where = f"store:{host.name}"
        self.last_seq = -1  # the last seq read from the store
        self.bad_hashes: list[int] = []

    def run(self, emit: Callable[[Finding], None], progress: Callable[[int], None]) -> HostReport:
        def out(findings: Iterable[Finding]) -> None:
            for finding in findings:
                emit(finding)

        size = self.head.size
        if size:
            for chunk, rows in self._runs(size):
                out(self.verifier.feed_chunk(chunk))
                out(self._bad_hashes())
                progress(rows)
            out(self.verifier.finish())
            out(self._unsealed())
        out(self._rows(size))
        out(self._fleet(size))
        if self.report.ok:
            out(self._head(size))
        return self.report

    # ------------------------------------------------------------------------------ records
    def _runs(self, size: int) -> Iterator[tuple[Chunk, int]]:
        """The stored lines 0 .. size-1 in runs of about CHUNK_BYTES, each stored hash checked
        against its line on the way."""
        rows = zip(
            self.store.records(self.name, 0, size),
            self.store.record_hashes(self.name, 0, size),
            strict=False,
        )
        lines: list[bytes] = []
        first, length = 0, 0
        for (seq, line), stored in rows:
            if not lines:
                first = seq
            if record_hash(line) != stored:
                self.bad_hashes.append(seq)
            lines.append(line)
            length += len(line) + 1
            self.last_seq = seq
            if length >= CHUNK_BYTES:
                yield self._chunk(first, lines), len(lines)
                lines, length = [], 0
        if lines:
            yield self._chunk(first, lines), len(lines)

    def _chunk(self, first: int, lines: list[bytes]) -> Chunk:
        return Chunk(f"{self.where}@{first}", 0, b"\n".join(lines) + b"\n")

    def _bad_hashes(self) -> Iterator[Finding]:
        for seq in self.bad_hashes:
            yield self._error(
                "the stored record hash is not the hash of the stored line: " + _BEHIND, seq
            )
        self.bad_hashes.clear()

    def _unsealed(self) -> Iterator[Finding]:
        """Ingest stores a batch only up to its last seal: records after the last valid seal
        were added by someone else (a record without a seal is authenticated by nothing)."""
        s = self.report.summary
        if s.unsealed > 0:
            yield self._error(
                f"{s.unsealed} records after the last valid seal: ingest stores only sealed "
                "records, " + _BEHIND,
                s.last_seal_seq + 1,
                seq_end=s.size - 1,
            )

    def _rows(self, size: int) -> Iterator[Finding]:
        if self.last_seq < size - 1:
            yield self._error(
                f"missing from the store: the head holds {size} records, the last stored row "
                f"is seq {self.last_seq}",
                self.last_seq + 1,
                seq_end=size - 1,
            )
        for seq, _ in self.store.records(self.name, size, _BEYOND):
            yield self._error(
                f"stored beyond the head, which holds records 0\u2013{size - 1}: {_BEHIND}", seq
            )
            break

    # ------------------------------------------------------------------------------ fleet log
    def _fleet(self, size: int) -> Iterator[Finding]:
        """The host's last fleet-log entry (a checkpoint of its records the collector logged
        when it accepted them, and signed receipts for) must be one of the stored seals: a
        store cut back behind it, head and all, still verifies on its own."""
        entries = self.store.fleet_size()
        published = self.store.fleet_published()
        if published is not None and published[0] > entries:
            yield self._error(
                f"the published fleet checkpoint covers {published[0]} fleet-log entries, the "
                f"fleet log holds {entries}: " + _BEHIND,
                None,
            )
        last = self.store.fleet_last_of(self.name, entries)
        if last is None:
            return
        index, host_size = last
        if host_size >= size:  # the seal at seq host_size is not stored
            held = f"holds {size} records" if size else "holds none"
            yield self._error(
                f"the fleet log's entry {index} is a checkpoint of {host_size} records of "
                f"{self.name} (its seal is record {host_size}), the store {held}: records "
                "were cut after the collector logged and acknowledged them: " + _BEHIND,
                size,
                seq_end=host_size,
            )
            return
        if host_size > self.last_seq:  # its seal is missing from the rows: ``_rows`` says so
            return
        try:
            (entry,) = self.store.fleet_entries(index, index + 1)
            logged = parse_entry(entry)
            line = next(iter(self.store.records(self.name, host_size, host_size + 1)))[1]
            stored = Checkpoint.from_seal(parse_line(line))
        except (FormatError, ValueError, StopIteration) as exc:
            yield self._error(f"the fleet log's entry {index} cannot be read ({exc})", host_size)
            return
        if stored != logged:
            yield self._error(
                f"the fleet log's entry {index} is not the checkpoint the stored seal "
                f"{host_size} signs: " + _BEHIND,
                host_size,
            )

    # ------------------------------------------------------------------------------ head
    def _head(self, size: int) -> Iterator[Finding]:
        """The head's state, last hash and checkpoint against the verified records."""
        head = self.head
        if size == 0:
            if head.state is not None or head.last_hash is not None or head.checkpoint:
                yield self._error(f"the head of an empty host holds a chain state: {_BEHIND}", None)
            return
        last = size - 1
        try:
            verified = self.verifier.state()
        except FormatError as exc:
            yield self._error(str(exc), last)
            return
        try:
            if head.state is None:
                raise FormatError("there is none")
            stored = ChainState.from_dict(json.loads(head.state))
        except (ValueError, FormatError) as exc:
            yield self._error(f"the head's chain state is not valid ({exc}): {_BEHIND}", last)
        else:
            if stored != verified:
                mine, theirs = verified.to_dict(), stored.to_dict()
                differ = ", ".join(k for k in mine if mine[k] != theirs[k])
                yield self._error(
                    f"the head's chain state is not the one its records give ({differ}): "
                    + _BEHIND,
                    last,
                )
        if head.last_hash is None or head.last_hash.hex() != verified.prev:
            yield self._error(
                f"the head's last hash is not the hash of record {last}: {_BEHIND}", last
            )
        yield from self._checkpoint(verified)

    def _checkpoint(self, verified: ChainState) -> Iterator[Finding]:
        """The head's checkpoint must be what the last valid seal signs (ingest keeps it for
        the ``/v1/head`` answer)."""
        text = self.head.checkpoint
        seal = verified.last_seal
        if text is None:
            if seal >= 0:
                yield self._error(
                    f"the head has no checkpoint although record {seal} is a valid seal: "
                    + _BEHIND,
                    seal,
                )
            return
        try:
            signed = SignedCheckpoint.from_dict(json.loads(text))
        except (ValueError, FormatError) as exc:
            yield self._error(f"the head's checkpoint is not valid ({exc}): {_BEHIND}", seal)
            return
        if signed.seal_seq != seal:
            yield self._error(
                f"the head's checkpoint is that of seal {signed.seal_seq}, not of the last "
                f"valid seal {seal}: {_BEHIND}",
                seal,
            )
            return
        line = next(iter(self.store.records(self.name, seal, seal + 1)))[1]
        if Checkpoint.from_seal(parse_line(line)) != (signed.checkpoint, signed.sig):
            yield self._error(
                f"the head's checkpoint is not the one seal {seal} signs: {_BEHIND}", seal
            )

    # ------------------------------------------------------------------------------ helpers
    def _error(self, message: str, seq: int | None, *, seq_end: int | None = None) -> Finding:
        """A finding of the store's own, counted in the summary like the verifier's."""
        finding = Finding("error", message, seq, seq_end, self.where)
        summary = self.report.summary
        summary.errors += 1
        if len(summary.findings) < MAX_KEPT_FINDINGS:
            summary.findings.append(finding)
        return finding
