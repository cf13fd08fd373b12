"""JournalWriter: API contract, seal timing, segment protection, recovery edge cases."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from agent.errors import JournalCorrupt, JournalError
from agent.journal import protect
from agent.journal.keys import KeyStore
from agent.journal.segments import iter_lines

from .conftest import Journal, errors


def records(journal: Journal) -> list[dict[str, object]]:
    return [json.loads(line.data) for line in iter_lines(journal.dir)]


def test_append_returns_gapless_seq_and_validates(journal: Journal) -> None:
    w = journal.writer()
    assert [w.append("event", {"kind": "exec", "pid": i}) for i in range(3)] == [0, 1, 2]
    for rtype, fields, match in (
        ("seal", {"size": 1, "root": "", "key_id": "", "sig": ""}, "written by the journal"),
        ("stop", {}, "written by the journal"),
        ("nonsense", {}, "unknown record type"),
        ("event", {"kind": "exec", "seq": 5}, "common names"),
        ("verdict", {"action": "maybe", "policy": "x", "rule": "r"}, "verdict action"),
        ("verdict", {"action": "deny"}, "lacks fields"),
        ("event", {"kind": "exec", "ratio": 0.5}, "float"),
        ("event", {"kind": "exec", "inode": 2**60}, "safe range|53"),
    ):
        with pytest.raises(JournalError, match=match):
            w.append(rtype, fields)
    assert w.next_seq == 3  # nothing half-appended
    w.close()
    w.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        w.append("event", {"kind": "exec"})
    summary = journal.verify(strict=True)
    assert summary.ok, errors(summary)
    assert [r["type"] for r in records(journal)][-2:] == ["stop", "seal"]


def test_every_record_is_sealed_within_the_interval(journal: Journal) -> None:
    w = journal.writer(seal_interval=0.05)
    w.append("start", {})
    time.sleep(0.06)
    w.tick()
    summary = journal.verify()
    assert summary.ok and summary.unsealed == 0  # sealed by tick while idle
    t0 = now = time.monotonic()
    slowest = 0.0  # one append's wall time: a stall of the machine (an fsync under load)
    while now - t0 < 0.2:
        w.append("event", {"kind": "exit"})
        slowest, now = max(slowest, time.monotonic() - now), time.monotonic()
    data = records(journal)
    seals = [r for r in data if r["type"] == "seal"]
    assert len(seals) >= 3  # sealed inline by append while records flow
    gaps = [int(str(b["ts"])) - int(str(a["ts"])) for a, b in itertools.pairwise(seals)]
    # the first append after the interval seals: later only by as much as one append took
    assert max(gaps) < (0.05 + slowest + 0.03) * 1e9
    w.close()


def test_seal_every_n_records(journal: Journal) -> None:
    w = journal.writer(seal_every=10)
    for _ in range(35):
        w.append("event", {"kind": "exit"})
    assert [r["seq"] for r in records(journal) if r["type"] == "seal"] == [10, 21, 32]
    w.close()


def test_concurrent_appends_from_threads(journal: Journal) -> None:
    w = journal.writer(seal_every=64)
    seqs: list[int] = []

    def work(n: int) -> None:
        for i in range(200):
            seqs.append(w.append("event", {"kind": "exec", "thread": n, "i": i}))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert sorted(seqs) == sorted(set(seqs)) and len(seqs) == 800
    summary = journal.verify(strict=True)
    assert summary.ok, errors(summary)


def test_reopen_continues_chain_and_checks_host(journal: Journal) -> None:
    journal.fill(30, seal_every=10)
    w = journal.writer(boot_id="boot-2")
    assert w.recovery is None  # the last run closed cleanly
    w.append("start", {})
    w.close()
    assert journal.verify(strict=True).ok
    with pytest.raises(JournalError, match="host-a"):
        journal.writer(host="host-b")


def test_boot_change_without_start_is_an_error(journal: Journal) -> None:
    journal.fill(10, seal_every=5)
    w = journal.writer(boot_id="boot-2")
    w.append("event", {"kind": "exec"})  # the daemon forgot its start record
    w.close()
    assert any("boot id changes" in e for e in errors(journal.verify()))


def test_segments_are_protected_where_the_filesystem_allows(journal: Journal) -> None:
    w = journal.fill(200, seal_every=20, close=False, protect_files=True)
    segments = journal.segments()
    live_flags = protect.get_flags(segments[-1])
    if not live_flags & protect.FS_APPEND_FL:
        pytest.skip("no inode flags here (not root, or tmpfs/overlay): degraded with a warning")
    assert all(protect.get_flags(p) & protect.FS_IMMUTABLE_FL for p in segments[:-1])
    with pytest.raises(PermissionError):
        segments[0].write_bytes(b"rewritten")
    with pytest.raises(PermissionError):
        os.truncate(segments[-1], 0)
    w.append("event", {"kind": "exec"})  # appending still works
    os.close(w._live.fd)  # crash with a torn tail under +a: recovery must clear the flag to cut
    with open(segments[-1], "ab") as f:
        f.write(b'{"boot_id":"boot-1","ho')
    w = journal.writer(protect_files=True)
    assert w.recovery is not None and w.recovery.cut_bytes == 23
    assert protect.get_flags(journal.segments()[-1]) & protect.FS_APPEND_FL
    w.close()
    assert journal.verify(strict=True).ok


def test_unsupported_flags_degrade_with_a_warning(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(protect, "_warned", set())
    monkeypatch.setattr(protect.fcntl, "ioctl", refuse)
    w = journal.writer(protect_files=True)
    w.append("start", {})
    w.close()
    assert "without inode protection" in caplog.text
    assert journal.verify(strict=True).ok


def test_damage_before_a_seal_is_not_cut(journal: Journal) -> None:
    journal.fill(40, seal_every=10, segment_bytes=1 << 30)
    last = journal.segments()[-1]
    lines = last.read_bytes().splitlines()
    lines[1] = lines[1][:-5]  # damage inside sealed records of the live segment
    journal.rewrite(last, lines)
    with pytest.raises(JournalCorrupt, match="refusing to cut sealed records"):
        journal.writer()


def test_reopen_after_crash_between_immutable_and_next_segment(journal: Journal) -> None:
    w = journal.fill(60, seal_every=10, close=False, segment_bytes=1 << 30)
    w.flush_and_seal()
    os.close(w._live.fd)
    last = journal.segments()[-1]
    if not protect.set_flag(last, protect.FS_IMMUTABLE_FL, True):
        pytest.skip("no inode flags here")
    w = journal.writer()
    assert journal.segments()[-1] != last  # continued in a new segment
    w.close()
    assert journal.verify(strict=True).ok


def test_missing_epoch_key_refuses_to_continue(journal: Journal) -> None:
    journal.fill(10, seal_every=5, rotate_every=5)
    for path in journal.keys.glob("epoch-*.key"):
        path.unlink()
    with pytest.raises(Exception, match="missing"):
        journal.writer()


def test_keys_created_on_first_start_only_when_allowed(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    with pytest.raises(JournalError, match="keys init"):
        j.writer(create_keys=False)
    w = j.writer()
    assert KeyStore(j.keys).genesis().key_id == w.key_id
    w.close()


def test_append_many_writes_what_appends_write(tmp_path: Path) -> None:
    """One write for a run of records, the same bytes as appending them one by one."""
    batch: list[tuple[str, dict[str, object]]] = [
        ("event", {"kind": "exec", "pid": i, "argv": ["a", str(i)]}) for i in range(20)
    ]
    batch.insert(7, ("verdict", {"action": "deny", "policy": "p", "rule": "r1"}))
    out = []
    KeyStore(tmp_path / "keys").init()
    for how in ("one", "many"):
        j = Journal(tmp_path / how)
        shutil.copytree(tmp_path / "keys", j.keys)  # the same key: the same seal signatures
        w = j.writer(clock=lambda: 1_795_000_000_000_000_000)
        if how == "one":
            for rtype, fields in batch:
                w.append(rtype, fields)  # type: ignore[arg-type]
        else:
            assert w.append_many(batch) == len(batch)  # type: ignore[arg-type]
        w.close()
        out.append(b"".join(p.read_bytes() for p in j.segments()))
        assert j.verify(strict=True).ok
    assert out[0] == out[1]


def test_append_many_checks_all_first_and_keeps_what_was_written(journal: Journal) -> None:
    w = journal.writer()
    with pytest.raises(JournalError, match="lacks fields"):
        w.append_many([("event", {"kind": "exec"}), ("verdict", {"action": "deny"})])
    assert w.next_seq == 0  # nothing was written
    with pytest.raises(JournalError, match="record not written"):
        w.append_many([("event", {"kind": "a"}), ("event", {"kind": "b", "x": (1, 2)}),
                       ("event", {"kind": "c"})])  # fmt: skip
    assert w.next_seq == 1  # the first one, and only it
    w.append("event", {"kind": "d"})
    w.close()
    assert [r.get("kind") for r in records(journal) if r["type"] == "event"] == ["a", "d"]
    assert journal.verify(strict=True).ok


@pytest.mark.parametrize("many", [False, True])
def test_a_failed_write_closes_the_journal_and_reopening_recovers(
    journal: Journal, many: bool
) -> None:
    w = journal.writer()
    w.append("event", {"kind": "exec", "pid": 1})
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, w._live.fd)  # every write now fails with ENOSPC, as on a full disk
    finally:
        os.close(full)
    with pytest.raises(JournalError, match=r"write failed, journal closed.*No space"):
        if many:
            w.append_many([("event", {"kind": "exec", "pid": 2})])
        else:
            w.append("event", {"kind": "exec", "pid": 2})
    with pytest.raises(JournalError, match="closed"):
        w.append("event", {"kind": "exec", "pid": 3})
    w2 = journal.writer()
    assert w2.recovery is not None and w2.recovery.last_good_seq == 0  # the one before it
    w2.close()
    assert journal.verify(strict=True).ok
