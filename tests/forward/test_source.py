"""JournalSource over real journals written by JournalWriter: exactly the stored bytes, from any
seq, bounded batches, never a partial line, segment rotation while reading, nothing written."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from agent.collector.ingest import Ingest, Rejected
from agent.collector.store import open_store
from agent.errors import JournalError
from agent.forward.source import JournalSource
from agent.journal.keys import SigningKey
from agent.journal.record import parse_line
from agent.journal.segments import iter_lines
from tests.forward.conftest import Journal


def stored(journal: Journal) -> list[bytes]:
    return [line.data + b"\n" for line in iter_lines(journal.dir)]


def read_all(source: JournalSource, start: int, limit: int) -> list[bytes]:
    out: list[bytes] = []
    seq = start
    while (batch := source.read(seq, limit)) is not None:
        assert batch.start == seq and batch.first.seq == seq
        data = bytes(batch.data)
        assert data.count(b"\n") == batch.count and data.endswith(b"\n")  # counted from seqs
        out += data.splitlines(keepends=True)
        seq = batch.end
    return out


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
    }


def is_seal(line: bytes) -> bool:
    return parse_line(line.rstrip(b"\n")).type == "seal"


def test_reads_every_stored_byte_across_segments_in_bounded_batches(journal: Journal) -> None:
    journal.fill(300, seal_every=2)
    lines = stored(journal)
    assert len(journal.segments()) > 5
    before = fingerprint(journal.dir)
    source = JournalSource(journal.dir, max_bytes=2000, max_records=5)
    seq, sizes = 0, []
    while (batch := source.read(seq, len(lines))) is not None:
        assert len(batch.data) <= 2000 and batch.count <= 5
        assert batch.sealed and is_seal(
            bytes(batch.data).splitlines()[-1]
        )  # what a collector stores
        sizes.append(batch.count)
        seq = batch.end
    assert seq == len(lines) and max(sizes) == 5
    assert b"".join(read_all(JournalSource(journal.dir), 0, len(lines))) == b"".join(lines)
    assert fingerprint(journal.dir) == before  # read only: not a byte, not a time changed


def test_a_batch_reaches_the_next_seal_beyond_its_bounds(journal: Journal) -> None:
    """The collector stores a batch up to its last seal: one without a seal would never go."""
    journal.fill(100, seal_every=40, segment_bytes=1 << 20)
    lines = stored(journal)
    source = JournalSource(journal.dir, max_bytes=2000, max_records=3)
    seq = 0
    while (batch := source.read(seq, len(lines))) is not None:
        body = bytes(batch.data).splitlines()
        assert batch.sealed and is_seal(body[-1]) and not any(map(is_seal, body[:-1]))
        seq = batch.end
    assert seq == len(lines)
    # a limit short of the next seal: the lines up to it, marked as not sealed
    first_seal = next(i for i, line in enumerate(lines) if is_seal(line))
    batch = JournalSource(journal.dir, max_bytes=2000).read(0, first_seal - 1)
    assert batch is not None and not batch.sealed and batch.end == first_seal - 1


@pytest.mark.parametrize("max_bytes", [1 << 20, 700])
def test_starts_at_any_seq_and_stops_at_the_limit(journal: Journal, max_bytes: int) -> None:
    journal.fill(200, seal_every=20)
    lines = stored(journal)
    for start in [0, 1, 19, 20, 21, 57, 118, len(lines) - 1]:
        for limit in (start + 1, start + 5, len(lines)):
            source = JournalSource(journal.dir, max_bytes=max_bytes)
            got = read_all(source, start, min(limit, len(lines)))
            assert got == lines[start : min(limit, len(lines))], (start, limit)
    assert JournalSource(journal.dir).read(len(lines), len(lines)) is None


def test_a_retried_batch_is_found_again_and_a_jump_back_reseeks(journal: Journal) -> None:
    journal.fill(120, seal_every=20)
    lines = stored(journal)
    source = JournalSource(journal.dir, max_records=7)
    first = source.read(30, len(lines))
    assert first is not None
    sent = (first.start, first.count, bytes(first.data), first.first, first.last)
    again = source.read(30, len(lines))  # sent again after a failure: the same batch
    assert again is not None
    assert (again.start, again.count, bytes(again.data), again.first, again.last) == sent
    back = source.read(3, 5)
    assert back is not None and back.data == b"".join(lines[3:5])


def test_a_line_being_written_is_never_sent(journal: Journal) -> None:
    w = journal.fill(40, seal_every=20, close=False)
    w.flush_and_seal()
    lines = stored(journal)
    live = journal.segments()[-1]
    with open(live, "ab") as f:  # what a writer has half written when the forwarder reads
        f.write(b'{"boot_id":"boot-1","host":"host-a","kind":"ex')
    source = JournalSource(journal.dir)
    assert b"".join(read_all(source, 0, len(lines) + 10)) == b"".join(lines)
    assert source.read(len(lines), len(lines) + 10) is None


def test_follows_the_writer_through_segment_rotations(journal: Journal) -> None:
    w = journal.writer()
    w.append("start", {"version": "0.1.0"})
    w.flush_and_seal()
    source = JournalSource(journal.dir, max_bytes=4096)
    seq = 0
    got: list[bytes] = []
    for i in range(400):  # the reader catches up after every few appends, seals, rotations
        w.append("event", {"kind": "exec", "pid": i, "argv": ["x" * (i % 50)]})
        if i % 9 == 0:
            w.flush_and_seal()
        while (batch := source.read(seq, w.sealed_size)) is not None:
            got += bytes(batch.data).splitlines(keepends=True)
            seq = batch.end
    w.close({"reason": "test"})
    while (batch := source.read(seq, w.sealed_size)) is not None:
        got += bytes(batch.data).splitlines(keepends=True)
        seq = batch.end
    assert len(journal.segments()) > 10
    assert got == stored(journal) and seq == w.next_seq


def test_a_line_longer_than_a_batch_is_sent_alone(journal: Journal) -> None:
    w = journal.writer()
    for fields in ({"version": "0.1.0"}, {"argv": ["y" * 5000]}, {"argv": ["z"]}):
        w.append("event", {"kind": "exec", **fields})
        w.flush_and_seal()
    w.close({"reason": "test"})
    lines = stored(journal)
    source = JournalSource(journal.dir, max_bytes=1024)
    batches = []
    seq = 0
    while (batch := source.read(seq, len(lines))) is not None:
        batches.append((batch.count, bytes(batch.data)))
        seq = batch.end
    assert [n for n, _ in batches][:2] == [2, 2] and batches[1][1] == b"".join(lines[2:4])
    assert b"".join(data for _, data in batches) == b"".join(lines)


def test_seqs_the_journal_does_not_hold_are_errors(journal: Journal) -> None:
    journal.fill(30, seal_every=10)
    lines = stored(journal)
    source = JournalSource(journal.dir)
    with pytest.raises(JournalError, match=f"record {len(lines) + 3} is not in the journal"):
        source.read(len(lines) + 3, len(lines) + 5)
    first = journal.segments()[0]
    os.unlink(first)
    with pytest.raises(JournalError, match="record 2 is not in the journal"):
        JournalSource(journal.dir).read(2, 5)


def test_a_journal_that_contradicts_itself_is_an_error(journal: Journal) -> None:
    journal.fill(30, seal_every=10)
    segment = journal.segments()[0]
    data = segment.read_bytes().splitlines(keepends=True)
    record = parse_line(data[0].rstrip(b"\n"))
    assert record.seq == 0
    segment.write_bytes(b"".join([data[0], *data[2:]]))  # record 1 cut out
    source = JournalSource(journal.dir)
    with pytest.raises(JournalError, match="record 2 where record 1 was expected"):
        source.read(1, 10)


def test_a_batch_is_a_view_of_one_buffer_released_by_the_next_read(journal: Journal) -> None:
    """No copy per batch: the next read reuses the buffer, so it releases the last batch's view
    (a batch kept longer fails loudly instead of showing another batch's bytes)."""
    journal.fill(200, seal_every=10)
    lines = stored(journal)
    source = JournalSource(journal.dir, max_bytes=8000)
    big = source.read(0, len(lines))
    assert big is not None and big.count > 10
    kept = bytes(big.data)
    small = source.read(big.end, big.end + 1)  # fewer bytes into the same buffer
    assert small is not None and small.count == 1
    assert kept == b"".join(lines[: big.end]) and small.data == lines[big.end]
    with pytest.raises(ValueError, match="released"):
        bytes(big.data)
    with pytest.raises(ValueError, match="released"):
        next(big.lines_from_end())
    assert list(small.lines_from_end()) == [lines[big.end].rstrip(b"\n")]
    again = source.read(0, len(lines))  # and the buffer's stale tail is never part of a batch
    assert again is not None and again.data == kept and again.count == big.count


@pytest.mark.parametrize(
    ("max_bytes", "max_records"), [(1 << 20, 16384), (3000, 16384), (1 << 20, 9)]
)
@pytest.mark.parametrize("seal_every", [1, 3, 17, 1000])
def test_the_count_from_seqs_is_the_count_of_lines(
    journal: Journal, max_bytes: int, max_records: int, seal_every: int
) -> None:
    journal.fill(150, seal_every=seal_every)
    lines = stored(journal)
    source = JournalSource(journal.dir, max_bytes=max_bytes, max_records=max_records)
    seq = 0
    while (batch := source.read(seq, len(lines))) is not None:
        data = bytes(batch.data)
        assert data.count(b"\n") == batch.count and data == b"".join(lines[seq : batch.end])
        assert batch.last == parse_line(lines[batch.end - 1].rstrip(b"\n"))
        assert (
            list(batch.lines_from_end())
            == [ln.rstrip(b"\n") for ln in lines[seq : batch.end]][::-1]
        )
        seq = batch.end
    assert seq == len(lines)


def _without_seq(line: bytes) -> bytes:
    record = parse_line(line.rstrip(b"\n"))
    return line.replace(b'"seq":%d,' % record.seq, b"")  # still canonical, keys still sorted


@pytest.mark.parametrize("which", ["first", "seal"])
def test_a_line_without_a_seq_is_a_journal_error(journal: Journal, which: str) -> None:
    journal.fill(30, seal_every=10)
    segment = journal.segments()[0]
    data = segment.read_bytes().splitlines(keepends=True)
    i = 0 if which == "first" else next(n for n, line in enumerate(data) if is_seal(line))
    data[i] = _without_seq(data[i])
    segment.write_bytes(b"".join(data))
    offset = sum(map(len, data[:i]))
    with pytest.raises(JournalError, match=f"at byte {offset}: not a journal record"):
        JournalSource(journal.dir).read(0, 10)


def test_a_seal_numbered_before_the_batch_is_a_journal_error(journal: Journal) -> None:
    journal.fill(30, seal_every=10)
    segment = journal.segments()[0]
    data = segment.read_bytes().splitlines(keepends=True)
    seal = next(n for n, line in enumerate(data) if is_seal(line))
    data.insert(seal + 2, data[seal])  # a copy of the seal after the record that follows it
    segment.write_bytes(b"".join(data))
    with pytest.raises(JournalError, match=f"record {seal} after record {seal + 1}"):
        JournalSource(journal.dir).read(seal + 1, seal + 3)


def test_a_record_missing_inside_a_batch_is_sent_as_stored_and_rejected_there(
    journal: Journal, tmp_path: Path
) -> None:
    """Only a batch's first line and its seal are parsed: a gap between them is not hidden
    (the stored bytes go as they are) and the collector, which checks every seq, rejects the
    batch at the missing record, as it did when the source counted lines."""
    journal.fill(30, seal_every=10)
    segment = journal.segments()[0]
    data = segment.read_bytes().splitlines(keepends=True)
    del data[5]
    segment.write_bytes(b"".join(data))
    batch = JournalSource(journal.dir).read(0, 1000)
    assert batch is not None and bytes(batch.data) == b"".join(data[: batch.count - 1])
    with open_store(str(tmp_path / "c.sqlite")) as store:
        store.enroll(journal.host, "ab" * 32, journal.genesis().to_line(), time.time_ns())  # type: ignore[attr-defined]
        host = store.host(journal.host)
        assert host is not None
        outcome = Ingest(store, "c", SigningKey.generate()).ingest(host, 0, bytes(batch.data))
    assert isinstance(outcome, Rejected) and outcome.seq == 5 and outcome.size == 0
