"""One suite for every store backend (``store``/``store_url`` run each test on SQLite and on a
real PostgreSQL server)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.collector.errors import EnrollmentConflict, StoreError, UnknownHost
from agent.collector.store import Status, Store, open_store, sql
from agent.errors import SealtrailError
from agent.journal.keys import SigningKey
from agent.journal.record import record_hash

REPO = Path(__file__).resolve().parents[2]
KEY_A = SigningKey(bytes(range(32))).public.to_line()
KEY_B = SigningKey(bytes(32)).public.to_line()
FP_A, FP_B, FP_C = "a" * 64, "b" * 64, "c" * 64


def batch(start: int, count: int, tag: bytes = b"") -> tuple[list[bytes], list[bytes]]:
    lines = [b'{"seq":%d,"t":"%s\xff\x00"}' % (start + i, tag) for i in range(count)]
    return lines, [record_hash(line) for line in lines]


def fill(store: Store, host: str, total: int, per: int = 100) -> list[bytes]:
    size = store.head(host).size
    written = []
    while size < total:
        lines, hashes = batch(size, min(per, total - size))
        assert store.append(host, size, lines, hashes, f'{{"n":{size}}}', None, None, size)
        written += lines
        size += len(lines)
    return written


def raw_execute(url: str, statement: str, params: Sequence[object] = ()) -> None:
    """Change the store behind its back, as an intruder (or a test of migrations) would;
    ``?`` placeholders for ``params``."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)
    else:
        conn = sqlite3.connect(url)
        with conn:
            conn.execute(statement, params)
        conn.close()


def raw_query(url: str, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Read the store behind its back (``?`` placeholders)."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(statement.replace("?", "%s"), params)]
    lite = sqlite3.connect(url)
    try:
        return [tuple(row) for row in lite.execute(statement, params)]
    finally:
        lite.close()


HOST_ID = "(SELECT id FROM hosts WHERE name = ? AND retired_ns IS NULL)"


def batch_holding(url: str, host: str, seq: int) -> tuple[int, int, bytes, bytes]:
    """(first_seq, count, lines, hashes) of the stored batch that holds record ``seq``."""
    ((first, count, lines, hashes),) = raw_query(
        url,
        f"SELECT first_seq, count, lines, hashes FROM batches WHERE host_id = {HOST_ID}"
        " AND first_seq <= ? AND first_seq + count > ?",
        (host, seq, seq),
    )
    return int(first), int(count), bytes(lines), bytes(hashes)


def tamper(
    url: str, host: str, seq: int, *, line: bytes | None = None, digest: bytes | None = None
) -> None:
    """Change record ``seq``'s line and/or stored hash inside its batch's blobs, as an intruder
    with SQL access would."""
    first, _, lines, hashes = batch_holding(url, host, seq)
    i = seq - first
    if line is not None:
        parts = lines.split(b"\n")
        parts[i] = line
        lines = b"\n".join(parts)
    if digest is not None:
        hashes = hashes[: 32 * i] + digest + hashes[32 * i + 32 :]
    raw_execute(
        url,
        f"UPDATE batches SET lines = ?, hashes = ? WHERE host_id = {HOST_ID} AND first_seq = ?",
        (lines, hashes, host, first),
    )


def delete_batch(url: str, host: str, seq: int) -> tuple[int, int]:
    """Delete the batch row that holds record ``seq``; its (first_seq, count)."""
    first, count, _, _ = batch_holding(url, host, seq)
    raw_execute(
        url, f"DELETE FROM batches WHERE host_id = {HOST_ID} AND first_seq = ?", (host, first)
    )
    return first, count


def cut_records(url: str, host: str, start: int, end: int = 1 << 62) -> None:
    """Delete records start .. end-1 from the batches that hold them, as an intruder would:
    each such batch row is deleted and what it held outside the range stored back as batches
    of their own (blobs cut, counts set)."""
    rows = raw_query(
        url,
        f"SELECT first_seq, count, lines, hashes FROM batches WHERE host_id = {HOST_ID}"
        " AND first_seq < ? AND first_seq + count > ?",
        (host, end, start),
    )
    for first, count, blob, digests in rows:
        lines, hashes = bytes(blob).split(b"\n"), bytes(digests)
        raw_execute(
            url, f"DELETE FROM batches WHERE host_id = {HOST_ID} AND first_seq = ?", (host, first)
        )
        for lo, hi in ((first, min(start, first + count)), (max(end, first), first + count)):
            if lo < hi:
                raw_execute(
                    url,
                    "INSERT INTO batches (host_id, first_seq, count, lines, hashes)"
                    f" VALUES ({HOST_ID}, ?, ?, ?, ?)",
                    (
                        host,
                        lo,
                        hi - lo,
                        b"\n".join(lines[lo - first : hi - first]),
                        hashes[32 * (lo - first) : 32 * (hi - first)],
                    ),
                )


# ------------------------------------------------------------------------------ enrollment
def test_enroll_binds_name_certificate_and_key(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    host = store.host("web-01")
    assert host is not None
    assert (host.name, host.fingerprint, host.genesis_key, host.enrolled_ns) == (
        "web-01",
        FP_A,
        KEY_A,
        100,
    )
    assert store.host_by_fingerprint(FP_A) == host
    assert store.host("web-02") is None and store.host_by_fingerprint(FP_B) is None
    store.enroll("db-01", FP_B, KEY_B, 200)
    assert [h.name for h in store.hosts()] == ["db-01", "web-01"]


def test_enroll_again_with_the_same_binding_changes_nothing(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    fill(store, "web-01", 10)
    store.enroll("web-01", FP_A, KEY_A.strip(), 999)  # the key line with or without newline
    assert store.host("web-01").enrolled_ns == 100  # type: ignore[union-attr]
    assert store.head("web-01").size == 10


def test_another_certificate_or_key_needs_replace(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    with pytest.raises(EnrollmentConflict, match="another certificate; pass --replace"):
        store.enroll("web-01", FP_B, KEY_A, 200)
    with pytest.raises(EnrollmentConflict, match="another genesis journal key"):
        store.enroll("web-01", FP_A, KEY_B, 200)
    assert store.host("web-01").fingerprint == FP_A  # type: ignore[union-attr]


def test_replace_certificate_keeps_the_records(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 25)
    store.enroll("web-01", FP_B, KEY_A, 200, replace=True)
    assert store.host_by_fingerprint(FP_A) is None
    assert store.host_by_fingerprint(FP_B).name == "web-01"  # type: ignore[union-attr]
    assert [line for _, line in store.records("web-01", 0, 25)] == lines


def test_replace_key_starts_a_new_journal_and_keeps_the_old_aside(
    store: Store, store_url: str
) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    fill(store, "web-01", 25)
    store.enroll("web-01", FP_B, KEY_B, 200, replace=True)
    head = store.head("web-01")
    assert (head.size, head.state, head.last_hash) == (0, None, None)
    assert store.host("web-01").genesis_key == KEY_B  # type: ignore[union-attr]
    assert list(store.records("web-01", 0, 100)) == []
    assert store.host_by_fingerprint(FP_A) is None
    fill(store, "web-01", 5)  # seq 0 again, under the new binding
    store.close()
    with open_store(store_url) as again:  # the old records are still there, retired
        assert len(again.hosts()) == 1


def test_a_certificate_belongs_to_one_host(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    with pytest.raises(EnrollmentConflict, match="already bound to host web-01"):
        store.enroll("web-02", FP_A, KEY_B, 200, replace=True)


@pytest.mark.parametrize(
    ("host", "fp", "key", "message"),
    [
        ("bad host", FP_A, KEY_A, "not usable"),
        ("web-01", "A" * 64, KEY_A, "64 lowercase hex"),
        ("web-01", FP_A, "sealtrail-ed25519 AAAA x", "not valid base64|32 bytes|does not match"),
    ],
)
def test_enroll_checks_its_values(store: Store, host: str, fp: str, key: str, message: str) -> None:
    with pytest.raises(SealtrailError, match=message):
        store.enroll(host, fp, key, 1)


# ------------------------------------------------------------------------------ head, append
def test_a_new_head_is_empty_and_ok(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    head = store.head("web-01")
    assert (head.size, head.state, head.last_hash, head.checkpoint) == (0, None, None, None)
    assert (head.last_seal_ns, head.last_receive_ns, head.status, head.detail) == (
        None,
        None,
        Status.OK,
        "",
    )
    assert (head.updated_ns, head.quarantine_dropped) == (100, 0)


def test_unknown_hosts_are_refused(store: Store) -> None:
    for call in (
        lambda: store.head("nobody"),
        lambda: store.append("nobody", 0, [], [], "{}", None, None, 1),
        lambda: store.records("nobody", 0, 1),
        lambda: store.record_hashes("nobody", 0, 1),
        lambda: store.set_status("nobody", Status.GAP, "", 1),
        lambda: store.touch("nobody", 1),
        lambda: store.quarantine("nobody", "x", b"", 1),
        lambda: store.quarantined("nobody"),
    ):
        with pytest.raises(UnknownHost, match="'nobody' is not enrolled"):
            call()


def test_append_stores_the_bytes_and_advances_the_head(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines, hashes = batch(0, 3)
    assert store.append("web-01", 0, lines, hashes, '{"s":1}', '{"c":1}', 555, 1000)
    head = store.head("web-01")
    assert (head.size, head.state, head.checkpoint, head.last_seal_ns) == (
        3,
        '{"s":1}',
        '{"c":1}',
        555,
    )
    assert (head.last_hash, head.last_receive_ns, head.updated_ns) == (hashes[-1], 1000, 1000)
    # a batch without a seal keeps the last checkpoint and seal time
    more, more_hashes = batch(3, 2)
    assert store.append("web-01", 3, more, more_hashes, '{"s":2}', None, None, 2000)
    head = store.head("web-01")
    assert (head.size, head.state, head.checkpoint, head.last_seal_ns) == (
        5,
        '{"s":2}',
        '{"c":1}',
        555,
    )
    assert list(store.records("web-01", 0, 5)) == list(enumerate(lines + more))
    assert list(store.record_hashes("web-01", 0, 5)) == hashes + more_hashes


def test_append_at_a_stale_size_writes_nothing(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    fill(store, "web-01", 10)
    before = store.head("web-01")
    for expected in (0, 9, 11):
        lines, hashes = batch(expected, 4, b"other")
        assert not store.append("web-01", expected, lines, hashes, "{}", "{}", 1, 5000)
    assert store.head("web-01") == before
    assert all(b"other" not in line for _, line in store.records("web-01", 0, 100))


def test_append_checks_its_arguments(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines, hashes = batch(0, 2)
    with pytest.raises(StoreError, match="2 lines but 1 hashes"):
        store.append("web-01", 0, lines, hashes[:1], "{}", None, None, 1)
    with pytest.raises(StoreError, match="32 bytes"):
        store.append("web-01", 0, lines, [b"x", b"y"], "{}", None, None, 1)
    with pytest.raises(StoreError, match="expected size"):
        store.append("web-01", -1, lines, hashes, "{}", None, None, 1)
    assert store.head("web-01").size == 0


def test_records_stream_in_chunks_and_by_range(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "CHUNK_ROWS", 7)
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 50, per=9)
    assert list(store.records("web-01", 0, 50)) == list(enumerate(lines))
    assert list(store.records("web-01", 13, 29)) == list(enumerate(lines))[13:29]
    assert list(store.records("web-01", 45, 1000)) == list(enumerate(lines))[45:]
    assert list(store.records("web-01", 30, 30)) == []
    hashes = [record_hash(line) for line in lines]
    assert list(store.record_hashes("web-01", 6, 22)) == hashes[6:22]
    # a stream is read lazily, and covers what was stored when it was asked for
    stream = store.records("web-01", 0, 60)
    first = [next(stream) for _ in range(10)]
    fill(store, "web-01", 60)
    assert first + list(stream) == list(enumerate(lines))


def test_records_of_one_host_are_not_another_hosts(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    store.enroll("web-02", FP_B, KEY_B, 100)
    fill(store, "web-01", 5)
    lines, hashes = batch(0, 3, b"two")
    assert store.append("web-02", 0, lines, hashes, "{}", None, None, 1)
    assert [line for _, line in store.records("web-02", 0, 10)] == lines
    assert store.head("web-01").size == 5


def test_status_and_touch(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    store.set_status("web-01", Status.FORK, "record 7 differs", 300)
    store.touch("web-01", 400)
    head = store.head("web-01")
    assert (head.status, head.detail, head.updated_ns, head.last_receive_ns) == (
        Status.FORK,
        "record 7 differs",
        300,
        400,
    )
    store.set_status("web-01", Status("unenrolled-key"), "", 500)
    assert store.head("web-01").status is Status.UNENROLLED_KEY


def test_two_writers_racing_store_each_record_once(store: Store, store_url: str) -> None:
    """Two store objects (two connections, as two collectors) append the same host at once."""
    store.enroll("web-01", FP_A, KEY_A, 100)
    other = open_store(store_url)
    wins = {0: 0, 1: 0}
    go = threading.Barrier(2)

    def writer(index: int, target: Store) -> None:
        go.wait()
        while (size := target.head("web-01").size) < 400:
            lines, hashes = batch(size, 20, b"w%d" % index)
            if target.append("web-01", size, lines, hashes, "{}", None, None, 1):
                wins[index] += 1

    threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate((store, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    other.close()
    assert sum(wins.values()) == 20
    seqs = [seq for seq, _ in store.records("web-01", 0, 1000)]
    assert seqs == list(range(400))
    # every batch is whole: one writer's 20 records, never a mix
    lines = [line for _, line in store.records("web-01", 0, 400)]
    for start in range(0, 400, 20):
        assert len({line.split(b'"t":"')[1][:2] for line in lines[start : start + 20]}) == 1


_CRASH_WRITER = """
import sys
from agent.collector.store import open_store
from agent.journal.record import record_hash
store = open_store(sys.argv[1])
size = store.head("web-01").size
print("ready", flush=True)
while True:
    lines = [b'{"seq":%d,"p":"%s"}' % (size + i, b"x" * 300) for i in range(500)]
    assert store.append("web-01", size, lines, [record_hash(x) for x in lines], "{}", None, None, 1)
    size += 500
"""


def test_kill_9_mid_ingest_leaves_whole_batches(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, store_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while store.head("web-01").size < 3000 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # well inside a batch: each takes milliseconds
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    store.close()
    with open_store(store_url) as again:
        head = again.head("web-01")
        assert head.size >= 3000 and head.size % 500 == 0
        stored = list(again.records("web-01", 0, head.size + 1000))
        assert [seq for seq, _ in stored] == list(range(head.size))
        assert head.last_hash == record_hash(stored[-1][1])
        assert all(b'"seq":%d,' % seq in line for seq, line in stored)


@pytest.mark.parametrize(
    "change",
    [
        # a batch stored at seq 6, inside the new batch's 5..7
        "INSERT INTO batches (host_id, first_seq, count, lines, hashes)"
        " SELECT host_id, 6, count, lines, hashes FROM batches WHERE first_seq = 0",
        # the stored batch 0..4 made to reach past the head, to seq 6
        "UPDATE batches SET count = 7 WHERE first_seq = 0",
        # a batch stored exactly where the new one starts
        "INSERT INTO batches (host_id, first_seq, count, lines, hashes)"
        " SELECT host_id, 5, count, lines, hashes FROM batches WHERE first_seq = 0",
    ],
)
def test_records_stored_behind_the_heads_back_are_reported(
    store: Store, store_url: str, change: str
) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    fill(store, "web-01", 5)
    raw_execute(store_url, change)
    lines, hashes = batch(5, 3)
    with pytest.raises(
        StoreError, match=r"5\.\.7 are already stored.*changed behind the collector"
    ):
        store.append("web-01", 5, lines, hashes, "{}", None, None, 1)
    assert store.head("web-01").size == 5  # rolled back whole
    assert all(b'"seq":6,' not in line for _, line in store.records("web-01", 0, 5))
    # a batch that overlaps nothing stored is still taken
    raw_execute(store_url, "DELETE FROM batches WHERE first_seq > 0")
    raw_execute(store_url, "UPDATE batches SET count = 5")
    assert store.append("web-01", 5, lines, hashes, "{}", None, None, 1)


def test_a_store_keeps_one_row_per_batch(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 25, per=10)
    rows = raw_query(store_url, "SELECT first_seq, count, lines, hashes FROM batches ORDER BY 1")
    assert [(r[0], r[1]) for r in rows] == [(0, 10), (10, 10), (20, 5)]
    for first, count, blob, digests in rows:
        part = lines[first : first + count]
        assert bytes(blob) == b"\n".join(part)
        assert bytes(digests) == b"".join(record_hash(line) for line in part)
    assert store.append("web-01", 25, [], [], '{"n":25}', None, None, 9)  # nothing: no row
    assert len(raw_query(store_url, "SELECT first_seq FROM batches")) == 3
    assert store.head("web-01").state == '{"n":25}'
    if store_url.startswith("postgresql://"):  # Debian's server has lz4: the lines use it
        assert raw_query(
            store_url,
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'batches'::regclass AND attname = 'lines'",
        ) == [("l",)]


def test_lines_are_stored_exactly_and_a_newline_is_refused(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    odd = [b"", b"\r", b" x ", b"\x00\xff", b""]
    assert store.append("web-01", 0, odd, [record_hash(x) for x in odd], "{}", None, None, 1)
    assert list(store.records("web-01", 0, 9)) == list(enumerate(odd))
    one = [b""]
    assert store.append("web-01", 5, one, [record_hash(b"")], "{}", None, None, 1)
    assert list(store.records("web-01", 5, 6)) == [(5, b"")]
    bad = [b"a", b"b\nc"]
    with pytest.raises(StoreError, match="a line holds a newline"):
        store.append("web-01", 6, bad, [record_hash(x) for x in bad], "{}", None, None, 1)
    assert store.head("web-01").size == 6


def test_records_slice_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql, "CHUNK_ROWS", 5)
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines: list[bytes] = []
    for count in (1, 17, 3, 1, 40, 2):  # batches smaller and larger than a window
        more, hashes = batch(len(lines), count)
        assert store.append("web-01", len(lines), more, hashes, "{}", None, None, 1)
        lines += more
    every = list(enumerate(lines))
    hashes = [record_hash(line) for line in lines]
    for start, end in [(0, 64), (0, 1), (1, 18), (2, 5), (17, 22), (20, 21), (30, 62), (63, 99)]:
        assert list(store.records("web-01", start, end)) == every[start:end], (start, end)
        assert list(store.record_hashes("web-01", start, end)) == hashes[start:end]
    assert list(store.records("web-01", -5, 2)) == every[:2]
    assert list(store.records("web-01", 70, 80)) == list(store.records("web-01", 9, 3)) == []


def test_records_skip_rows_deleted_and_find_rows_far_beyond(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 50, per=10)
    assert delete_batch(store_url, "web-01", 23) == (20, 10)
    raw_execute(
        store_url,
        "INSERT INTO batches (host_id, first_seq, count, lines, hashes)"
        " SELECT host_id, ?, count, lines, hashes FROM batches WHERE first_seq = 0",
        (1 << 50,),
    )
    seqs = [seq for seq, _ in store.records("web-01", 0, 1 << 62)]  # a hole of 2^50: skipped
    assert seqs == [*range(20), *range(30, 50), *range(1 << 50, (1 << 50) + 10)]
    assert [line for _, line in store.records("web-01", 15, 35)] == lines[15:20] + lines[30:35]
    assert len(list(store.record_hashes("web-01", 0, 50))) == 40


def test_a_byte_changed_in_a_batch_is_read_at_its_seq(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 30, per=10)
    changed = lines[14].replace(b'"seq":14', b'"seq":15')
    tamper(store_url, "web-01", 14, line=changed)
    tamper(store_url, "web-01", 20, digest=bytes(32))
    got = list(store.records("web-01", 0, 30))
    assert got == list(enumerate([*lines[:14], changed, *lines[15:]]))
    hashes = list(store.record_hashes("web-01", 0, 30))
    assert [i for i, h in enumerate(hashes) if h != record_hash(got[i][1])] == [14, 20]


def test_a_batch_whose_newlines_changed_gives_no_seq_outside_it(
    store: Store, store_url: str
) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 30, per=10)
    first, count, blob, _ = batch_holding(store_url, "web-01", 12)
    joined = b"\n".join(lines[10:20])
    assert (first, count, blob) == (10, 10, joined)
    for changed, expect in [
        # one newline fewer: seqs 10..18, the last of them two lines in one
        (joined.replace(b"\n", b"", 1), [lines[10] + lines[11], *lines[12:20]]),
        # one newline more: still seqs 10..19, the newline kept in the last
        (joined.replace(b'"t":"', b'"t":"\n', 1), [b'{"seq":10,"t":"']),
    ]:
        raw_execute(store_url, "UPDATE batches SET lines = ? WHERE first_seq = 10", (changed,))
        got = list(store.records("web-01", 0, 30))
        seqs = [seq for seq, _ in got]
        inside = [line for seq, line in got if 10 <= seq < 20]
        assert (
            seqs == sorted(seqs)
            and seqs[:10] == list(range(10))
            and seqs[-10:] == list(range(20, 30))
        )
        assert len(inside) <= 10 and b"\n".join(inside) == changed
        assert inside[: len(expect)] == expect


def test_a_v1_store_is_migrated_to_one_row_per_run(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of version 1 (one row per record) opens as version 2: each run of consecutive
    seqs (cut at MIGRATE_BATCH_BYTES) becomes one batch, every byte and hash kept."""
    store.enroll("web-01", FP_A, KEY_A, 100)
    store.enroll("db-01", FP_B, KEY_B, 100)
    store.close()
    if store_url.startswith("postgresql://"):
        from agent.collector.store.postgres import TYPES
    else:
        from agent.collector.store.sqlite import TYPES
    raw_execute(store_url, "DROP TABLE batches")
    raw_execute(store_url, sql.RECORDS_V1.format(**TYPES))
    web, _ = batch(0, 120, b"web")
    db, _ = batch(0, 10, b"db")
    web[50] = b"an intruder's\nline"  # a row no batch can hold among others
    rows = [("web-01", seq, line) for seq, line in enumerate(web) if seq not in (30, 31)]
    rows += [("db-01", seq, line) for seq, line in enumerate(db)]
    for host, seq, line in rows:
        raw_execute(
            store_url,
            f"INSERT INTO records (host_id, seq, line, hash) VALUES ({HOST_ID}, ?, ?, ?)",
            (host, seq, line, record_hash(line) if seq != 7 else b"short"),
        )
    raw_execute(store_url, f"UPDATE heads SET size = 120 WHERE host_id = {HOST_ID}", ("web-01",))
    raw_execute(store_url, f"UPDATE heads SET size = 10 WHERE host_id = {HOST_ID}", ("db-01",))
    raw_execute(store_url, "UPDATE schema_version SET version = 1")
    monkeypatch.setattr(sql, "MIGRATE_BATCH_BYTES", 40 * (len(web[60]) + 1))  # 40 of 51..90

    with open_store(store_url) as again:
        assert raw_query(store_url, "SELECT version FROM schema_version") == [(sql.SCHEMA_VERSION,)]
        stored = {(h, seq): line for h, seq, line in rows}
        for host in ("web-01", "db-01"):
            got = list(again.records(host, 0, 200))
            assert got == [(seq, line) for (h, seq), line in stored.items() if h == host]
            want = [record_hash(line) if s != 7 else b"short" for s, line in got]
            assert list(again.record_hashes(host, 0, 200))[: len(want)] == want
        runs = raw_query(
            store_url,
            f"SELECT first_seq, count FROM batches WHERE host_id = {HOST_ID} ORDER BY first_seq",
            ("web-01",),
        )
        assert [tuple(r) for r in runs] == [
            (0, 7), (7, 1), (8, 22),  # 7: its hash no longer has 32 bytes
            (32, 18), (50, 1),  # 30, 31 missing; 50 holds a newline
            (51, 40), (91, 29),  # cut at 40 lines' bytes
        ]  # fmt: skip
        lines, hashes = batch(120, 5)
        assert again.append("web-01", 120, lines, hashes, "{}", None, None, 1)
    with pytest.raises(Exception, match="records"):
        raw_query(store_url, "SELECT * FROM records")


# ------------------------------------------------------------------------------ quarantine
def test_quarantine_keeps_rejected_data_aside_and_bounded(store: Store) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    limit = store.quarantine_limit  # 64 KiB in these tests
    bodies = [bytes([i]) * 20_000 for i in range(6)]
    ids = [
        store.quarantine("web-01", f"fork at {i}", body, 1000 + i) for i, body in enumerate(bodies)
    ]
    entries = store.quarantined("web-01")
    assert [e.id for e in entries] == ids[-3:]  # three 20 kB bodies fit in 64 KiB, not four
    assert [(e.reason, e.received_ns, e.size, e.body) for e in entries] == [
        (f"fork at {i}", 1000 + i, 20_000, bodies[i]) for i in range(3, 6)
    ]
    assert store.head("web-01").quarantine_dropped == 3
    assert store.head("web-01").size == 0 and list(store.records("web-01", 0, 10)) == []
    huge = store.quarantine("web-01", "oversized", b"z" * (limit * 2), 2000)
    (entry,) = [e for e in store.quarantined("web-01") if e.id == huge]
    assert entry.size == limit * 2 and len(entry.body) <= limit


# ------------------------------------------------------------------------------ schema, open
def test_data_survives_reopening(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    lines = fill(store, "web-01", 30)
    store.set_status("web-01", Status.GAP, "expected 30, got 40", 7)
    store.close()
    with open_store(store_url) as again:
        assert [line for _, line in again.records("web-01", 0, 30)] == lines
        assert again.head("web-01").status is Status.GAP


def test_a_newer_schema_is_refused(store: Store, store_url: str) -> None:
    store.close()
    raw_execute(store_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this sealtrail"):
        open_store(store_url)


def test_sqlite_commits_are_synchronous_wal_and_private(tmp_path: Path) -> None:
    with open_store(f"sqlite://{tmp_path}/s.sqlite") as store:
        conn = store._conn  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        store.enroll("web-01", FP_A, KEY_A, 1)
        fill(store, "web-01", 3)
    for name in ("s.sqlite", "s.sqlite-wal"):
        path = tmp_path / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://relative.sqlite", "absolute path"),
        ("mysql://x/y", "unknown scheme"),
        ("", "empty path"),
    ],
)
def test_store_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_an_unreachable_postgresql_is_one_clear_error() -> None:
    with pytest.raises(
        StoreError, match=r"cannot connect to the store postgresql://u@127.0.0.1:1/db"
    ):
        open_store("postgresql://u:secret@127.0.0.1:1/db")
    try:
        open_store("postgresql://u:secret@127.0.0.1:1/db")
    except StoreError as exc:
        assert "secret" not in str(exc)
