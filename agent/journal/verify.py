"""Journal verification as a pure state machine: lines in, findings out, no IO.

Feed ``Verifier.feed`` every stored line in order (``segments.iter_lines`` does the IO), then call
``finish``. Each finding names the seq, segment file and byte offset and what is wrong. Checked:
the canonical encoding and hash of every record (over the bytes as received), the ``prev`` chain,
seq gaplessness and segment numbering, host and boot consistency, every seal's signature, Merkle
root and coverage, the key rotation chain from the genesis key, that every ``recovery`` record
describes the journal before it, whether the journal ends with the agent's ``stop`` record and
its final seal, and optionally consistency with a checkpoint exported earlier (``against``).

What no local verify can see: a journal cut at a seal after an earlier clean stop (or cut and
given a new stop and seal by someone holding the current epoch key), a cut followed by a restart
(the recovery record then reads as a crash), or the whole journal replaced under a new genesis
key. The collector (forwarding with signed receipts) closes that: docs/journal-format.md, 10.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import orjson

from agent.errors import FormatError
from agent.journal.canonical import parse_canonical
from agent.journal.chain import Chain, new_chain
from agent.journal.checkpoint import Checkpoint, SignedCheckpoint, follow_rotation
from agent.journal.keys import PublicKey
from agent.journal.record import Record
from agent.journal.segments import Chunk, Line, SegmentNumbering, split_lines
from agent.journal.state import ChainState, key_text

Severity = Literal["error", "warning", "info"]
#: A journal that does not end with ``stop`` and its seal; an error with ``strict``.
NOT_STOPPED = (
    "journal does not end with the agent's stop record and final seal: cut or crash (a local "
    "verify cannot tell which), or the agent is still running (a live journal ends so until the "
    "agent stops)"
)
#: The summary keeps this many findings (all are yielded and all errors counted): a journal
#: wrecked from its first record must not exhaust memory.
MAX_KEPT_FINDINGS = 10_000


@dataclass(frozen=True)
class Finding:
    severity: Severity
    message: str
    seq: int | None = None
    seq_end: int | None = None
    segment: str | None = None
    offset: int | None = None
    #: True for a seal whose Merkle root does not fit its batch: something in seq..seq_end
    #: changed, but the seal alone cannot say which record.
    batch: bool = False

    def __str__(self) -> str:
        if self.seq is None:
            where = "journal"
        elif self.seq_end is not None and self.seq_end != self.seq:
            where = f"records {self.seq}\u2013{self.seq_end}"
        else:
            where = f"record {self.seq}"
        if self.segment is not None:
            where += f" in {self.segment}"
            if self.offset is not None:
                where += f" at byte {self.offset}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "seq": self.seq,
            "seq_end": self.seq_end,
            "segment": self.segment,
            "offset": self.offset,
            "message": self.message,
            "batch": self.batch,
        }


@dataclass
class Summary:
    #: Records checked by this run (a resumed run counts from ``start``).
    records: int = 0
    #: Seq of the first record this run checked (0, or the resumed state's ``next_seq``).
    start: int = 0
    #: Segments (sources) whose lines this run checked.
    segments: int = 0
    seals: int = 0
    rotations: int = 0
    last_seal_seq: int = -1
    unsealed: int = 0
    errors: int = 0
    host: str | None = None
    key_id: str | None = None
    boots: int = 0
    #: ``recovery`` records: runs that ended without their stop record (crash or cut).
    recoveries: int = 0
    #: The journal ends with the agent's ``stop`` record and the valid seal right after it.
    clean_end: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def size(self) -> int:
        """Records in the journal up to where this run ended (``start + records``)."""
        return self.start + self.records

    def to_dict(self) -> dict[str, object]:
        """The summary as ``journal verify --json`` prints it (docs/journal-format.md)."""
        return {
            "ok": self.ok,
            "records": self.records,
            "start": self.start,
            "seals": self.seals,
            "rotations": self.rotations,
            "segments": self.segments,
            "host": self.host,
            "last_seal_seq": self.last_seal_seq,
            "unsealed": self.unsealed,
            "key_id": self.key_id,
            "clean_end": self.clean_end,
            "recoveries": self.recoveries,
            "errors": self.errors,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class _Link:
    """A broken prev link between record ``seq - 1`` and ``seq``, judged one record later."""

    seq: int
    segment: str
    offset: int
    #: Where record ``seq - 1`` was read; None when this run did not read it (a verifier
    #: resumed from a chain state: the record was verified and accepted earlier).
    before: tuple[str, int] | None


class Verifier:
    """Streaming verifier of one host's journal against its genesis public key.

    Lines come from a source that knows nothing of records: ``feed`` takes one ``Line``
    (segment id, byte offset, bytes), ``feed_chunk``/``feed_segment`` a run of them. The segment
    id is opaque here; a file source passes ``numbering`` (``segments.SegmentNumbering``) to have
    segment files' numbering checked, a network source (the collector) does not.
    """

    def __init__(
        self,
        genesis: PublicKey,
        *,
        against: SignedCheckpoint | None = None,
        strict: bool = False,
        use_native: bool | None = None,
        state: ChainState | None = None,
        expected_host: str | None = None,
        numbering: SegmentNumbering | None = None,
    ) -> None:
        """``use_native``: None takes the native fast path where built, False never does.

        ``state``: go on from a chain state a verifier (or the writer) reached earlier, as if the
        records before it had just been checked (``resume``). ``expected_host``: records of any
        other host are errors from the first one on.
        """
        self.summary = Summary(key_id=genesis.key_id)
        self._use_native = use_native is not False
        #: Seq, prev and Merkle tree; the fast path (``add_ordinary``) takes runs of ordinary
        #: records where the chain is native, the rest goes through ``feed``.
        self._chain: Chain = new_chain(use_native=self._use_native)
        #: Records the native fast path took (the rest went through ``feed``).
        self.fast_records = 0
        self._key = genesis
        self._genesis = genesis
        self._numbering = numbering
        self._strict = strict
        self._against = against
        self._prev_at: tuple[str, int] | None = None  # where the last record fed was read
        self._host: str | None = None
        self._boot: str | None = None
        self._segment: str | None = None
        self._batch_start = 0  # first seq a coming seal must cover
        self._last_seal_at = -1  # seq of the last seal record, valid or not (as the writer saw it)
        self._after_stop = False  # the record just fed is a stop record
        self._shifted = False  # a seq discontinuity was reported: positions no longer = seqs
        self._tree_tainted_at: int | None = None  # seal whose root first did not match
        self._roots_skipped = 0
        self._link: _Link | None = None
        self._torn: Line | None = None
        self._hashes: dict[int, str] = {}
        self._initial: list[Finding] = []
        self._last_type: str | None = None
        self._epoch_start: int | None = None
        if expected_host is not None:
            self._host = self.summary.host = expected_host
        if state is not None:
            self._resume(state)
        if against is not None:
            try:
                against.verify(genesis)
            except FormatError as exc:
                self._initial.append(
                    self._error(f"--against checkpoint rejected: {exc}", None, None, None)
                )
            self._host = self.summary.host = against.checkpoint.host
            watch = [against.checkpoint.size - 1]
            if against.tail is not None:
                watch.append(against.tail.last_seq)
            self._watch = frozenset(watch)
        else:
            self._watch = frozenset()

    @classmethod
    def resume(
        cls,
        state: ChainState,
        genesis: PublicKey,
        *,
        strict: bool = False,
        use_native: bool | None = None,
        numbering: SegmentNumbering | None = None,
    ) -> Verifier:
        """A verifier that goes on from ``state`` (which an earlier verification reached).

        The state is trusted as it is (it is the caller's own record of what it verified); its
        epoch key must be the genesis key or carried in the state. Records of another host than
        the state's are errors.
        """
        return cls(
            genesis,
            strict=strict,
            use_native=use_native,
            state=state,
            expected_host=state.host,
            numbering=numbering,
        )

    def _resume(self, state: ChainState) -> None:
        try:
            self._key = state.epoch_key(self._genesis)
        except FormatError as exc:
            self._initial.append(self._error(f"chain state rejected: {exc}", None, None, None))
        self._chain = new_chain(state, use_native=self._use_native)
        self._host = state.host
        self._boot = state.boot
        self._batch_start = state.last_seal + 1
        self._last_seal_at = state.last_seal
        self._last_type = state.last_type
        self._after_stop = state.last_type == "stop"
        self._epoch_start = state.epoch_start
        s = self.summary
        s.start = state.next_seq
        s.host = state.host
        s.key_id = self._key.key_id
        s.last_seal_seq = state.last_seal
        s.clean_end = state.clean_end

    def state(self) -> ChainState:
        """Where the journal stands after the lines fed so far, to ``resume`` from later.

        Only a clean run has one: raises ``FormatError`` once an error was found, or while a
        torn line or a broken link is pending (the state would carry what was not verified).
        """
        if self.summary.errors or self._initial:
            raise FormatError(
                f"no chain state to resume from: verification found {self.summary.errors} errors"
            )
        if self._torn is not None or self._link is not None:
            raise FormatError("no chain state to resume from: the last line is not complete")
        if self._host is None:
            raise FormatError("no chain state to resume from: no record was checked")
        return ChainState(
            host=self._host,
            next_seq=self._chain.size,
            prev=self._chain.prev,
            frontier=self._chain.frontier(),
            boot=self._boot,
            key_id=self._key.key_id,
            key=None if self._key == self._genesis else key_text(self._key),
            epoch_start=self._epoch_start,
            last_seal=self.summary.last_seal_seq,
            last_type=self._last_type,
            clean_end=self.summary.clean_end,
        )

    @property
    def _expected(self) -> int:
        """The seq the next record must carry."""
        return self._chain.next_seq

    # ----------------------------------------------------------------------------- input
    def feed_chunk(
        self, chunk: Chunk, *, progress: Callable[[int], None] | None = None
    ) -> Iterator[Finding]:
        """Check every line of one chunk of a source (``segments.Chunk``)."""
        if not chunk.data:
            self.summary.segments += chunk.segment != self._segment  # an empty segment file
            return
        if chunk.offset:
            for line in split_lines(chunk.segment, chunk.data, chunk.offset):
                yield from self.feed(line)
            return
        yield from self.feed_segment(chunk.segment, chunk.data, progress=progress)

    def feed_segment(
        self,
        segment: str,
        content: bytes,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Finding]:
        """Check every line of one segment's ``content``; the same findings as ``feed`` per line.

        Runs of ordinary records go through the chain's fast path (native: ``add_ordinary``);
        everything else, and every line it is unsure of, through ``feed``. ``progress`` is
        called with the byte offset reached, about every 64k records.
        """
        pos, end = 0, len(content)
        find = content.find
        lines = 0
        while pos < end:
            limit = self._fast_limit(segment)
            if limit:
                run = min(limit, 1 << 16)
                size = self._chain.size
                pos = self._fast(segment, content, pos, run)
                if progress is not None and self._chain.size > size:
                    progress(pos)
                if pos >= end:
                    break
                if self._chain.size - size == run:  # stopped at its limit, not at a line
                    continue
            if progress is not None and lines & 0xFFFF == 0:
                progress(pos)
            lines += 1
            nl = find(b"\n", pos)
            if nl < 0:
                yield from self.feed(Line(segment, pos, content[pos:], False))
                break
            yield from self.feed(Line(segment, pos, content[pos:nl]))
            pos = nl + 1

    def _fast_limit(self, segment: str) -> int:
        """How many records the fast path may take now (0: the next line needs ``feed``)."""
        if (
            self._initial
            or self._torn is not None
            or self._link is not None
            or segment != self._segment
            or self._host is None
            or self._boot is None
        ):
            return 0
        size = self._chain.size
        stops = [w for w in self._watch if w >= size]
        if self._against is not None and self._against.checkpoint.size - 1 >= size:
            stops.append(self._against.checkpoint.size - 1)
        return min(stops) - size if stops else 1 << 62

    def _fast(self, segment: str, content: bytes, pos: int, limit: int) -> int:
        assert self._host is not None and self._boot is not None
        size = self._chain.size
        end = self._chain.add_ordinary(content, pos, self._host, self._boot, limit)
        taken = self._chain.size - size
        if taken:
            self._after_stop = self.summary.clean_end = False  # ordinary records only
            last = max(pos, content.rfind(b"\n", pos, end - 1) + 1)  # the last record taken
            self._last_type = str(orjson.loads(content[last : end - 1])["type"])  # for ``state``
            self._prev_at = (segment, last)
            self.summary.records += taken
            self.fast_records += taken
        return end

    def feed(self, line: Line) -> Iterator[Finding]:
        """Check one stored line; yields findings (errors also counted in the summary)."""
        if self._initial:
            yield from self._initial
            self._initial.clear()
        if line.segment != self._segment:
            yield from self._new_segment(line)
        if self._torn is not None:
            torn, self._torn = self._torn, None
            yield self._error(
                "torn line in the middle of the journal", self._expected, torn.segment, torn.offset
            )
        if not line.complete:
            self._torn = line
            return
        data = line.data
        seq = self._expected
        record: Record | None = None
        try:
            record = Record.from_dict(parse_canonical(data))
        except FormatError as exc:
            yield self._error(f"malformed record: {exc}", seq, line.segment, line.offset)
        errors_before, seals_before = self.summary.errors, self.summary.seals
        if record is not None:
            yield from self._check(record, line)
        # The end is clean only at a valid seal right after a stop record (close() writes both).
        self.summary.clean_end = self._after_stop and self.summary.seals > seals_before
        self._after_stop = record is not None and record.type == "stop"
        self._last_type = record.type if record is not None else None
        # A broken link into a record that already has its own error (a seq gap, a foreign
        # host) is explained by that error; otherwise it is judged one record later.
        broken = (
            record is not None
            and record.prev != self._chain.prev
            and self.summary.errors == errors_before
        )
        if broken or self._link is not None:
            yield from self._judge_link(broken=broken, line=line)
        chain = self._chain
        if record is not None:
            chain.renumber(record.seq)  # resynchronise after a gap or a replay
        chain.add(data)  # the record hash over the bytes as stored
        self._prev_at = (line.segment, line.offset)
        if chain.size - 1 in self._watch:
            self._hashes[chain.size - 1] = chain.prev
        self.summary.records += 1
        if self._against is not None and chain.size == self._against.checkpoint.size:
            yield from self._check_against(line)

    def settle(self) -> Iterator[Finding]:
        """End of a batch, not of the journal: judge what waits for a next line (a broken
        link into the last line, a torn last line), so ``state`` can be taken or refused."""
        yield from self._initial
        self._initial.clear()
        if self._link is not None:
            yield from self._judge_link(broken=False, line=None)
        if self._torn is not None:
            torn, self._torn = self._torn, None
            yield self._error(
                "torn line at the end of the batch", self._expected, torn.segment, torn.offset
            )

    def finish(self) -> Iterator[Finding]:
        """End of input: pending judgements, the unsealed tail, truncation against a checkpoint."""
        yield from self._initial
        self._initial.clear()
        if self._link is not None:
            yield from self._judge_link(broken=False, line=None)
        if self._torn is not None:
            torn = self._torn
            yield self._finding(
                "error" if self._strict else "warning",
                f"torn last line, {len(torn.data)} bytes (crash before recovery?)",
                self._expected,
                None,
                torn.segment,
                torn.offset,
            )
        if self._roots_skipped:
            yield self._finding(
                "warning",
                f"Merkle roots of {self._roots_skipped} later seals not compared: the tree "
                f"holds the records altered before seal {self._tree_tainted_at}",
                None,
                None,
                None,
                None,
            )
        s = self.summary
        if s.size == 0:
            yield self._error("journal is empty", None, None, None)
        unsealed = s.size - 1 - s.last_seal_seq
        s.unsealed = unsealed
        if unsealed > 0:
            yield self._finding(
                "error" if self._strict else "info",
                f"unsealed tail, {unsealed} records",
                s.last_seal_seq + 1,
                s.size - 1,
                self._segment,
                None,
            )
        s.clean_end = s.clean_end and self._torn is None
        if s.size and not s.clean_end:
            severity: Severity = "error" if self._strict else "warning"
            yield self._finding(
                severity, NOT_STOPPED, self._expected - 1, None, self._segment, None
            )
        if self._against is not None:
            yield from self._check_against_end()

    # ----------------------------------------------------------------------------- checks
    def _new_segment(self, line: Line) -> Iterator[Finding]:
        self._segment = line.segment
        self.summary.segments += 1
        if self._numbering is None:
            return
        problem = self._numbering.check(line.segment)
        if problem is not None:
            yield self._error(
                problem.message,
                self._expected if problem.names_seq else None,
                line.segment,
                line.offset if problem.at_line else None,
            )

    def _check(self, record: Record, line: Line) -> Iterator[Finding]:
        seq = record.seq
        if seq != self._expected:
            self._shifted = True
            if seq > self._expected:
                yield self._error(
                    f"missing (next record present has seq {seq})",
                    self._expected,
                    line.segment,
                    line.offset,
                    seq - 1,
                )
            elif seq == self._expected - 1:
                yield self._error(
                    "seq appears twice (a record was inserted or duplicated)",
                    seq,
                    line.segment,
                    line.offset,
                )
            else:
                yield self._error(
                    f"record with seq {seq} found where seq {self._expected} belongs "
                    "(reordered or replayed)",
                    self._expected,
                    line.segment,
                    line.offset,
                )
        if self._host is None:
            self._host = record.host
            self.summary.host = record.host
        elif record.host != self._host:
            yield self._error(
                f"host {record.host!r} is not the journal's host {self._host!r}",
                self._expected,
                line.segment,
                line.offset,
            )
        if record.boot_id != self._boot:
            if self._boot is not None and record.type not in ("start", "recovery"):
                yield self._error(
                    f"boot id changes to {record.boot_id} without a start or recovery record",
                    self._expected,
                    line.segment,
                    line.offset,
                )
            self._boot = record.boot_id
            self.summary.boots += 1
        if record.type == "seal":
            yield from self._check_seal(record, line)
            self._last_seal_at = self._expected
        elif record.type == "recovery":
            yield from self._check_recovery(record, line)
        elif record.type == "key_rotation":
            try:
                self._key = follow_rotation(self._key, record)
                self._epoch_start = record.ts
                self.summary.rotations += 1
                self.summary.key_id = self._key.key_id
            except FormatError as exc:
                yield self._error(
                    f"key rotation rejected: {exc}", self._expected, line.segment, line.offset
                )

    def _check_seal(self, seal: Record, line: Line) -> Iterator[Finding]:
        seq = self._expected
        try:
            checkpoint, signature = Checkpoint.from_seal(seal)
        except FormatError as exc:
            yield self._error(f"seal malformed: {exc}", seq, line.segment, line.offset)
            return
        batch = (self._batch_start, seq - 1)
        self._batch_start = seq + 1
        bad: list[str] = []
        if checkpoint.size != self._chain.size:
            # After a reported seq gap or replay, positions and seqs differ: that is the cause.
            if not self._shifted:
                bad.append(f"claims {checkpoint.size} records but {self._chain.size} precede it")
        elif checkpoint.root != self._chain.root().hex():
            # Once the tree holds an altered leaf, every later root differs too; those seals
            # still protect their batches through the signed ``last`` hash and the chain.
            if self._tree_tainted_at is None:
                bad.append("Merkle root does not match the records it covers")
                self._tree_tainted_at = seq
            else:
                self._roots_skipped += 1
        if bad:  # the seal proves only that something in its batch changed: name the batch
            yield self._error(
                f"{'; '.join(bad)} (seal {seq} in {line.segment} at byte {line.offset})",
                batch[0],
                None,
                None,
                seq_end=batch[1],
                batch=True,
            )
        if checkpoint.key_id != self._key.key_id:
            yield self._error(
                f"seal signed by a key not in the rotation chain (key id {checkpoint.key_id}, "
                f"current epoch key {self._key.key_id}); records {batch[0]}\u2013{batch[1]} "
                "are not sealed",
                seq,
                line.segment,
                line.offset,
            )
        elif not self._key.verify(signature, checkpoint.signing_input()):
            yield self._error(
                f"seal signature is not valid for key {self._key.key_id}; records "
                f"{batch[0]}\u2013{batch[1]} are not sealed",
                seq,
                line.segment,
                line.offset,
            )
        else:
            self.summary.seals += 1
            self.summary.last_seal_seq = seq

    def _check_recovery(self, record: Record, line: Line) -> Iterator[Finding]:
        """A recovery record must describe the journal before it as the writer found it.

        It is a warning, not an error, even with ``strict``: the next run recorded, inside the
        chain, that the run before it did not stop cleanly. Whether that was a crash or a cut
        at a seal followed by a restart, only the collector can tell.
        """
        seq = self._expected
        self.summary.recoveries += 1
        found = {"last_good_seq": seq - 1, "last_sealed_seq": self._last_seal_at}
        if "unsealed_kept" in record.fields:
            found["unsealed_kept"] = seq - 1 - self._last_seal_at
        wrong = [
            f"{name} {record.fields[name]!r} (the journal has {value})"
            for name, value in found.items()
            if record.fields[name] != value or isinstance(record.fields[name], bool)
        ]
        if wrong:
            yield self._error(
                f"recovery record does not describe the journal before it: {', '.join(wrong)}",
                seq,
                line.segment,
                line.offset,
            )
        yield self._finding(
            "warning",
            "the run before this record ended without the agent's stop record and final seal: "
            f"crash or cut (a local verify cannot tell which); recovered: a torn tail of "
            f"{record.fields['cut_bytes']} bytes cut, {seq - 1 - self._last_seal_at} unsealed "
            "records kept",
            seq,
            None,
            line.segment,
            line.offset,
        )

    def _judge_link(self, *, broken: bool, line: Line | None) -> Iterator[Finding]:
        """Decide which record a broken prev link incriminates.

        A link ``a -> b`` breaks when ``a`` was altered or ``b``'s prev was. If the next link
        ``b -> c`` is also broken, ``b`` itself was altered (its prev and its hash both changed);
        otherwise ``a``'s bytes no longer hash to what ``b`` recorded.
        """
        pending = self._link
        if pending is None:
            assert line is not None and broken
            self._link = _Link(self._expected, line.segment, line.offset, self._prev_at)
            return
        self._link = None
        if broken:
            assert line is not None
            yield self._error(
                "record altered: neither its prev nor its hash fit its neighbours",
                pending.seq,
                pending.segment,
                pending.offset,
            )
        elif pending.before is None:  # this run read no record before it: blame it
            what = (
                "its prev is not 64 zeros, as record 0's must be"
                if pending.seq == 0
                else f"its prev is not the hash of record {pending.seq - 1}, verified earlier"
            )
            yield self._error(
                f"does not chain to the journal before it: {what}",
                pending.seq,
                pending.segment,
                pending.offset,
            )
        else:
            yield self._error(
                f"hash mismatch: record {pending.seq} chains to a different hash",
                pending.seq - 1,
                *pending.before,
            )

    def _check_against(self, line: Line) -> Iterator[Finding]:
        assert self._against is not None
        cp = self._against.checkpoint
        if self._chain.root().hex() != cp.root or self._chain.prev != cp.last:
            yield self._error(
                f"journal does not extend the checkpoint of size {cp.size}: history before it "
                "was rewritten",
                cp.size - 1,
                line.segment,
                line.offset,
            )

    def _check_against_end(self) -> Iterator[Finding]:
        assert self._against is not None
        cp, tail = self._against.checkpoint, self._against.tail
        size = self._chain.size
        if size < cp.size:
            yield self._error(
                f"truncated: the checkpoint covers records 0\u2013{cp.size - 1}, the journal "
                f"ends at {size - 1}",
                size,
                None,
                None,
                seq_end=cp.size - 1,
            )
            return
        if tail is not None:
            seen = self._hashes.get(tail.last_seq)
            if seen is None:
                yield self._error(
                    f"unsealed tail changed: the checkpoint saw records "
                    f"{self._against.seal_seq + 1}\u2013{tail.last_seq} after its seal, the "
                    f"journal ends at {size - 1}",
                    size,
                    None,
                    None,
                    seq_end=tail.last_seq,
                )
            elif seen != tail.last_hash:
                yield self._error(
                    "unsealed tail changed: record differs from the one the checkpoint saw",
                    tail.last_seq,
                    None,
                    None,
                )

    # ----------------------------------------------------------------------------- helpers
    def _error(
        self,
        message: str,
        seq: int | None,
        segment: str | None,
        offset: int | None,
        seq_end: int | None = None,
        batch: bool = False,
    ) -> Finding:
        return self._finding("error", message, seq, seq_end, segment, offset, batch)

    def _finding(
        self,
        severity: Severity,
        message: str,
        seq: int | None,
        seq_end: int | None,
        segment: str | None,
        offset: int | None,
        batch: bool = False,
    ) -> Finding:
        finding = Finding(severity, message, seq, seq_end, segment, offset, batch)
        if severity == "error":
            self.summary.errors += 1
        if len(self.summary.findings) < MAX_KEPT_FINDINGS:
            self.summary.findings.append(finding)
        return finding


def verify_lines(
    lines: Iterable[Line],
    genesis: PublicKey,
    *,
    against: SignedCheckpoint | None = None,
    strict: bool = False,
) -> Summary:
    """Run a whole verification of segment files' lines; the findings are in
    ``Summary.findings``."""
    verifier = Verifier(genesis, against=against, strict=strict, numbering=SegmentNumbering())
    for line in lines:
        for _ in verifier.feed(line):
            pass
    for _ in verifier.finish():
        pass
    return verifier.summary
