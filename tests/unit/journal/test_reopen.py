"""Reopening a journal: the native bulk scan finds exactly what the Python scan finds.

``scan`` rebuilds seq, chain, Merkle tree, key epoch, last seal and the torn-tail cut from
the segments. Both ways run on copies of the same journals (clean, crashed mid-line, several
boots and key rotations, damaged in the last segment) and must agree on every field, and on
the bytes left on disk after a cut.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent import native
from agent.journal import protect
from agent.journal import recover as recover_module
from agent.journal.recover import SCAN_STATE, ScanState
from agent.journal.recover import scan as _scan
from agent.journal.segments import list_segments
from agent.native.hashchain import NativeChain

from .conftest import Journal

pytestmark = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native core not built (make native)",
)


def scan_both(directory: Path, tmp: Path) -> None:
    """Python and native, each with and without the saved scan state: the same scan."""
    results = []
    for use_native, saved in ((False, False), (True, False), (False, True), (True, True)):
        copy = tmp / f"copy-{use_native}-{saved}"
        shutil.copytree(directory, copy)
        protect.clear_all(copy)
        assert (copy / SCAN_STATE).exists() == (len(list_segments(copy)) > 1)
        scan = _scan(copy, use_native=use_native, use_saved_state=saved)
        files = [(p.name, p.read_bytes()) for _, p in list_segments(copy)]
        results.append(
            (
                scan.chain.next_seq,
                scan.chain.prev,
                scan.host,
                scan.key_id,
                scan.epoch_start,
                scan.last_seal_seq,
                scan.tail,
                scan.recovery,
                scan.chain.size,
                scan.chain.root(),
                scan.chain.frontier(),
                files,
            )
        )
        if use_native:
            assert isinstance(scan.chain, NativeChain)
    assert results[0] == results[1] == results[2] == results[3]


def test_clean_journal_with_rotations_and_boots(journal: Journal, tmp_path: Path) -> None:
    journal.fill(150, seal_every=13, rotate_every=40)
    journal.fill(60, seal_every=9, boot_id="boot-2")  # a second run appends to it
    assert len(journal.segments()) > 3
    scan_both(journal.dir, tmp_path)


@pytest.mark.parametrize("cut", [1, 17, 60, 200])
def test_crashed_mid_line(journal: Journal, tmp_path: Path, cut: int) -> None:
    journal.fill(100, seal_every=10, close=False)
    last = journal.segments()[-1]
    protect.clear_all(journal.dir)
    data = last.read_bytes()
    last.write_bytes(data[: max(0, len(data) - cut)])
    scan_both(journal.dir, tmp_path)


def test_unsealed_tail_after_a_kill(journal: Journal, tmp_path: Path) -> None:
    w = journal.fill(100, seal_every=30, close=False)
    assert w.next_seq > 100
    scan_both(journal.dir, tmp_path)


@pytest.mark.parametrize("where", [0.3, 0.95])
def test_garbage_in_the_last_segment(journal: Journal, tmp_path: Path, where: float) -> None:
    journal.fill(130, seal_every=40, close=False, segment_bytes=20000)
    last = journal.segments()[-1]
    protect.clear_all(journal.dir)
    data = bytearray(last.read_bytes())
    assert len(journal.segments()) > 1 and data.count(b"\n") > 20
    data[int(len(data) * where)] ^= 0x20
    last.write_bytes(bytes(data))
    try:
        scan_both(journal.dir, tmp_path)
    except Exception as exc:  # both refuse (damage before a seal): the same refusal
        assert "refusing to cut sealed records" in str(exc), exc


def test_bulk_scan_is_used_and_fast_path_taken(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.fill(200, seal_every=45, close=False, segment_bytes=20000)
    taken: list[int] = []
    lines: list[int] = []
    add_ordinary, add_lines = NativeChain.add_ordinary, NativeChain.add_lines

    def spy_ordinary(self: NativeChain, content: bytes, pos: int, host: str, boot: str) -> int:
        end = add_ordinary(self, content, pos, host, boot)
        taken.append(content.count(b"\n", pos, end))
        return end

    def spy_lines(self: NativeChain, content: bytes) -> int:
        lines.append(content.count(b"\n"))
        return add_lines(self, content)

    monkeypatch.setattr(NativeChain, "add_ordinary", spy_ordinary)
    monkeypatch.setattr(NativeChain, "add_lines", spy_lines)
    scan = _scan(journal.dir, use_native=True, use_saved_state=False)
    assert isinstance(scan.chain, NativeChain)
    assert len(journal.segments()) > 1
    assert sum(lines) + sum(taken) > 0.9 * scan.chain.next_seq  # nearly all in C
    assert sum(taken) > 10  # the last segment's events too


def saved_state_used(directory: Path) -> bool:
    """Did ``scan`` start from the saved state? (It then reads fewer segments.)"""
    read: list[str] = []
    original = recover_module.read_segment

    def spy(path: Path) -> bytes:
        read.append(path.name)
        return original(path)

    recover_module.read_segment = spy  # type: ignore[assignment]
    try:
        _scan(directory)
    finally:
        recover_module.read_segment = original  # type: ignore[assignment]
    return len(read) < len(list_segments(directory))


def test_saved_state_skips_sealed_segments(journal: Journal) -> None:
    journal.fill(150, seal_every=10)
    assert len(journal.segments()) > 4
    assert saved_state_used(journal.dir)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "other_frontier", "segment_grew", "next_segment_replaced", "missing_segment"],
)
def test_a_stale_or_forged_saved_state_is_ignored(
    journal: Journal, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    journal.fill(150, seal_every=10)
    protect.clear_all(journal.dir)
    path = journal.dir / SCAN_STATE
    state = json.loads(path.read_bytes())
    segs = journal.segments()
    named = journal.dir / state["segment"]
    if damage == "garbage":
        path.write_bytes(b"{not json")
    elif damage == "other_frontier":
        state["chain"]["frontier"][0] = "00" * 32
        path.write_text(json.dumps(state))
    elif damage == "segment_grew":
        named.write_bytes(named.read_bytes() + segs[-1].read_bytes().splitlines(True)[0])
    elif damage == "next_segment_replaced":
        following = segs[segs.index(named) + 1]
        lines = following.read_bytes().splitlines(True)
        following.write_bytes(b"".join(lines[1:]))
    else:
        named.unlink()
    if damage == "other_frontier":
        # the files still match: the forged frontier is taken, and the verifier catches the
        # next seal (its root no longer fits the records), not the writer
        assert saved_state_used(journal.dir)
        return
    copy = tmp_path / "copy"
    shutil.copytree(journal.dir, copy)
    with caplog.at_level(logging.WARNING):
        got = outcome(journal.dir, use_saved_state=True)
    assert got == outcome(copy, use_saved_state=False)  # exactly what a full scan finds
    assert any(SCAN_STATE in r.getMessage() for r in caplog.records)


def outcome(directory: Path, use_saved_state: bool) -> object:
    try:
        scan = _scan(directory, use_saved_state=use_saved_state)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return (
        scan.chain.next_seq,
        scan.chain.prev,
        scan.chain.root(),
        scan.last_seal_seq,
        scan.recovery,
    )


def test_saved_state_is_a_chain_state(journal: Journal) -> None:
    journal.fill(150, seal_every=10)
    raw = json.loads((journal.dir / SCAN_STATE).read_bytes())
    assert sorted(raw) == ["chain", "format", "segment", "size"] and raw["format"] == 2
    state = ScanState.from_dict(raw)
    assert state.to_dict() == raw
    assert state.chain.host == journal.host and state.chain.last_type == "seal"
    named = journal.dir / state.segment
    assert named.stat().st_size == state.size


def test_a_format_1_saved_state_is_ignored(journal: Journal) -> None:
    journal.fill(150, seal_every=10)
    path = journal.dir / SCAN_STATE
    protect.clear_all(journal.dir)
    raw = json.loads(path.read_bytes())
    chain = raw.pop("chain")
    old = {
        "format": 1,
        **raw,
        "next_seq": chain["next_seq"],
        "prev": chain["prev"],
        "tree_size": chain["next_seq"],
        "frontier": chain["frontier"],
        "host": chain["host"],
        "key_id": chain["key_id"],
        "epoch_start": chain["epoch_start"],
        "last_seal_seq": chain["last_seal"],
    }
    path.write_text(json.dumps(old))
    assert not saved_state_used(journal.dir)
