"""Kernel e2e: another mount namespace's table is read once and again only when it changes
(red team 2026-12-08: 20,000 bind mounts in a namespace of one's own, read again for every
permission event, held every fanotify decision on the host for over a second each)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce import mounts
from agent.enforce.mounts import MountView

pytestmark = pytest.mark.kernel

#: In a mount namespace of its own: N bind mounts of argv[1] at argv[2]/b0.., then wait for a
#: line on stdin (one more bind mount at argv[2]/late), then another line (exit).
NAMESPACE = """
set -e
i=0
while [ $i -lt "$3" ]; do mkdir -p "$2/b$i"; mount --bind "$1" "$2/b$i"; i=$((i + 1)); done
echo ready
read _
mkdir -p "$2/late"; mount --bind "$1" "$2/late"
echo late
read _
"""


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    src, points = tmp_path / "src", tmp_path / "points"
    src.mkdir()
    (src / "f").write_text("x")
    points.mkdir()
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", NAMESPACE, "sh", str(src),
         str(points), "12"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield proc, src, points
    finally:
        proc.kill()
        proc.wait()


def test_a_foreign_table_is_read_once_and_again_when_it_changes(
    namespace: tuple[subprocess.Popen[str], Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, src, points = namespace
    reads: list[int] = []
    real = mounts.read_capped

    def counted(fd: int, limit: int) -> tuple[str, bool]:
        reads.append(fd)
        return real(fd, limit)

    monkeypatch.setattr(mounts, "read_capped", counted)
    view = MountView()
    for _ in range(50):
        assert str(src / "f") in view.aliases(str(points / "b3" / "f"), proc.pid)
    assert len(reads) == 1, "the unchanged table was read again"
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "late"
    time.sleep(mounts._ForeignTables.REREAD_S + 0.1)  # not read again sooner (next test)
    assert str(src / "f") in view.aliases(str(points / "late" / "f"), proc.pid)
    assert len(reads) == 2, "a mount made since was not seen"


def test_a_foreign_table_past_the_cap_is_cut_and_said_so(
    namespace: tuple[subprocess.Popen[str], Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, src, points = namespace
    total = len(Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines())
    monkeypatch.setattr(mounts, "FOREIGN_MOUNTS_MAX", total - 4)  # the last bind mounts cut
    view = MountView()
    started = time.monotonic()
    assert view.aliases(str(points / "b11" / "f"), proc.pid) == []
    assert str(src / "f") in view.aliases(str(points / "b0" / "f"), proc.pid)
    assert time.monotonic() - started < 5
    assert view._foreign.capped, "the namespace cut short is remembered (and logged)"


def test_a_table_that_changes_faster_than_it_is_read_is_said_to_be_stale(
    namespace: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    """A namespace whose mounts change again within REREAD_S of the last read gets its last
    table, said to be stale (the decision then judges fail-closed): a mount loop beside the
    cache held every decision 0.8 s (red team 2026-12-08). Read again once REREAD_S passed."""
    proc, src, points = namespace
    view = MountView()
    assert view.aliases_checked(str(points / "b1" / "f"), proc.pid).stale is False
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "late"
    found, stale, _ = view.aliases_checked(str(points / "late" / "f"), proc.pid)
    assert stale and found == [], "the mount made since is not in the table read before it"
    time.sleep(mounts._ForeignTables.REREAD_S + 0.1)
    found, stale, _ = view.aliases_checked(str(points / "late" / "f"), proc.pid)
    assert not stale and str(src / "f") in found
