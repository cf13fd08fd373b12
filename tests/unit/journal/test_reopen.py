"""Reopening a journal: the native bulk scan finds exactly what the Python scan finds.

``_scan`` rebuilds seq, chain, Merkle tree, key epoch, last seal and the torn-tail cut from
the segments. Both ways run on copies of the same journals (clean, crashed mid-line, several
boots and key rotations, damaged in the last segment) and must agree on every field, and on
the bytes left on disk after a cut.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.journal import native, protect
from agent.journal.segments import list_segments
from agent.journal.writer import _scan

from .conftest import Journal

pytestmark = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native core not built (make native)",
)


def scan_both(directory: Path, tmp: Path) -> None:
    results = []
    for use_native in (False, True):
        copy = tmp / f"copy-{use_native}"
        shutil.copytree(directory, copy)
        protect.clear_all(copy)
        scan = _scan(copy, use_native=use_native)
        files = [(p.name, p.read_bytes()) for _, p in list_segments(copy)]
        results.append(
            (
                scan.next_seq,
                scan.prev,
                scan.host,
                scan.key_id,
                scan.epoch_start,
                scan.last_seal_seq,
                scan.tail,
                scan.recovery,
                scan.tree.size,
                scan.tree.root(),
                scan.tree.frontier,
                files,
            )
        )
        if use_native:
            assert scan.chain is not None
    assert results[0] == results[1]


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
    add_ordinary, add_lines = native.Chain.add_ordinary, native.Chain.add_lines

    def spy_ordinary(self: native.Chain, content: bytes, pos: int, host: str, boot: str) -> int:
        end = add_ordinary(self, content, pos, host, boot)
        taken.append(content.count(b"\n", pos, end))
        return end

    def spy_lines(self: native.Chain, content: bytes) -> int:
        lines.append(content.count(b"\n"))
        return add_lines(self, content)

    monkeypatch.setattr(native.Chain, "add_ordinary", spy_ordinary)
    monkeypatch.setattr(native.Chain, "add_lines", spy_lines)
    scan = _scan(journal.dir, use_native=True)
    assert scan.chain is not None and scan.chain.next_seq == scan.next_seq
    assert len(journal.segments()) > 1
    assert sum(lines) + sum(taken) > 0.9 * scan.next_seq  # nearly all in C
    assert sum(taken) > 10  # the last segment's events too
