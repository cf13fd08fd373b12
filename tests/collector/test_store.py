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


def test_records_stored_behind_the_heads_back_are_reported(store: Store, store_url: str) -> None:
    store.enroll("web-01", FP_A, KEY_A, 100)
    fill(store, "web-01", 5)
    raw_execute(
        store_url,
        "INSERT INTO records (host_id, seq, line, hash) SELECT host_id, 6, line, hash"
        " FROM records WHERE seq = 0",
    )
    lines, hashes = batch(5, 3)
    with pytest.raises(StoreError, match="changed behind the collector's back"):
        store.append("web-01", 5, lines, hashes, "{}", None, None, 1)
    assert store.head("web-01").size == 5  # rolled back whole


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
